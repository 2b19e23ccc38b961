//! The OpenAPI document's own parts: what no handler says (title, tags,
//! the bearer scheme, the schemas only events carry), the marking of the
//! operations behind the token, and `GET /api/v1/openapi.json`.
//!
//! The operations themselves come from the handlers' `#[utoipa::path]`
//! annotations, collected by the router as it registers them (see
//! [`super::router`]).

pub mod formats;

use super::error::ApiErrorBody;
use axum::Extension;
use axum::body::Bytes;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, HeaderBuilder, Ref, RefOr, ResponseBuilder};

/// Name of the bearer security scheme in the document.
pub const BEARER: &str = "bearer";

/// What the document says besides the operations.
#[derive(Debug, utoipa::OpenApi)]
#[openapi(
    info(
        title = "agentic orchestrator",
        description = "Durable multi-stage workflows over agent workers on Redis Streams.\n\n\
            JSON under `/api/v1`. Errors are `{\"error\": {\"code\", \"message\"}}` \
            (`ApiErrorBody`) with a stable `code`. Every `/api/v1` operation but this \
            document needs `Authorization: Bearer <token>` (401 `unauthorized` \
            without a known token) of a role allowed to call it (403 `forbidden`): \
            `viewer` reads and follows event streams, `operator` also starts and acts \
            on workflows and replays or purges dead letters, `admin` also registers \
            definitions and submits raw tasks. Every route refuses a `Host` that does \
            not name the server (421 `misdirected`), a cross-site request (403 \
            `cross_site`: another `Origin`, or `Sec-Fetch-Site` `cross-site` / \
            `same-site`), and a POST without `Content-Type: application/json` (415). \
            An unknown path answers 404 `no_route`, a known path with another method \
            405 `method_not_allowed`.",
    ),
    modifiers(&BearerScheme),
    components(schemas(
        ApiErrorBody,
        orchestrator::store::Change,
        orchestrator::store::LogEntry,
        // The formats that parameters name (bodies' fields register theirs).
        formats::AgentTypeName,
        formats::AgentsCursor,
        formats::Name,
        formats::WorkflowId,
        formats::TaskKey,
        formats::EntryIdText,
        formats::DurationText,
        formats::WaitText,
        formats::SinceText,
        formats::SseEvent,
    )),
    tags(
        (name = "workflows", description = "Start, read, list workflows; operator actions; the event log"),
        (name = "definitions", description = "Workflow definitions (a DAG of stages), versioned"),
        (name = "tasks", description = "Standalone tasks to an agent type, and their results"),
        (name = "agents", description = "Live agent instances, and agent types needed with none live"),
        (name = "dlq", description = "Dead letters per agent type: list, show, replay, purge"),
        (name = "streams", description = "Queues per agent type, and workflows by status"),
        (name = "events", description = "Server-sent events: workflow changes, live"),
        (name = "health", description = "Probes, metrics and this document: no token needed"),
    )
)]
pub struct ApiDoc;

/// Declares the `bearer` security scheme.
#[derive(Debug)]
struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A token of the server's `--tokens-file`, `--api-token-file` or \
                         `AGENTIC_API_TOKEN`, or the one it generated at start (its path \
                         is logged); the scheme is matched in any case",
                    ))
                    .build(),
            ),
        );
    }
}

fn error_response(description: String) -> ResponseBuilder {
    ResponseBuilder::new().description(description).content(
        "application/json",
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("ApiErrorBody")))
            .build(),
    )
}

/// Marks every operation of `doc` as needing the bearer token, answering
/// 401 without a known one and 403 to a token without the role the
/// operation needs ([`super::auth::required_role`], the table the server
/// enforces). Called on exactly the routes the server puts behind the
/// token, so the document says what the server does.
pub fn require_token(doc: &mut utoipa::openapi::OpenApi) {
    let unauthorized = error_response(
        "`unauthorized`: no bearer token, or one the server does not know".to_owned(),
    )
    .header(
        "WWW-Authenticate",
        HeaderBuilder::new()
            .schema(<String as utoipa::PartialSchema>::schema())
            .description(Some("`Bearer`"))
            .build(),
    )
    .build();
    for (path, item) in doc.paths.paths.iter_mut() {
        for (method, op) in operations_by_method(item) {
            let role = super::auth::required_role(&method, path);
            op.security = Some(vec![SecurityRequirement::new(BEARER, Vec::<String>::new())]);
            op.responses
                .responses
                .insert("401".to_owned(), RefOr::T(unauthorized.clone()));
            let forbidden = error_response(format!(
                "`forbidden`: needs a token of the `{role}` role (or above); `cross_site`: \
                 a request from another site"
            ))
            .build();
            op.responses
                .responses
                .insert("403".to_owned(), RefOr::T(forbidden));
        }
    }
}

/// Adds what the browser guard answers on every route (see
/// [`super::auth::browser_guard`]): 403 `cross_site`, 421 `misdirected`,
/// and 415 on every POST; and marks every POST's body as required, since a
/// POST without `Content-Type: application/json` is refused (the body may
/// be `{}` where every field is optional).
pub fn browser_refusals(doc: &mut utoipa::openapi::OpenApi) {
    for item in doc.paths.paths.values_mut() {
        for (method, op) in operations_by_method(item) {
            let r = &mut op.responses.responses;
            r.entry("403".to_owned()).or_insert_with(|| {
                RefOr::T(
                    error_response(
                        "`cross_site`: a request from another site (`Origin`, `Sec-Fetch-Site`)"
                            .to_owned(),
                    )
                    .build(),
                )
            });
            r.insert(
                "421".to_owned(),
                RefOr::T(
                    error_response(
                        "`misdirected`: the `Host` is not a name of this server (DNS rebinding)"
                            .to_owned(),
                    )
                    .build(),
                ),
            );
            if method == axum::http::Method::POST {
                if let Some(body) = op.request_body.as_mut() {
                    body.required = Some(utoipa::openapi::Required::True);
                }
                let r = &mut op.responses.responses;
                r.entry("415".to_owned()).or_insert_with(|| {
                    RefOr::T(
                        error_response(
                            "`unsupported_media_type`: not `Content-Type: application/json`"
                                .to_owned(),
                        )
                        .build(),
                    )
                });
            }
        }
    }
}

/// The operations of a path item with their methods.
fn operations_by_method(
    item: &mut utoipa::openapi::path::PathItem,
) -> impl Iterator<Item = (axum::http::Method, &mut Operation)> {
    use axum::http::Method;
    [
        (Method::GET, &mut item.get),
        (Method::PUT, &mut item.put),
        (Method::POST, &mut item.post),
        (Method::DELETE, &mut item.delete),
        (Method::OPTIONS, &mut item.options),
        (Method::HEAD, &mut item.head),
        (Method::PATCH, &mut item.patch),
        (Method::TRACE, &mut item.trace),
    ]
    .into_iter()
    .filter_map(|(m, op)| op.as_mut().map(|op| (m, op)))
}

/// Opens up the closed schemas that a `#[serde(flatten)]` composes: a type
/// with `deny_unknown_fields` gets `additionalProperties: false`, and as an
/// `allOf` part of a larger answer (`DefinitionView` flattens `Definition`
/// and adds `levels`) that would forbid the other parts' properties. Such a
/// part is inlined without it; the type itself stays closed where it is a
/// request body.
pub fn open_flattened(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::schema::{AdditionalProperties, Schema};
    params_not_null(doc);
    let Some(components) = doc.components.as_mut() else {
        return;
    };
    let closed: std::collections::BTreeMap<String, Schema> = components
        .schemas
        .iter()
        .filter_map(|(name, schema)| match schema {
            RefOr::T(Schema::Object(o))
                if matches!(
                    o.additional_properties.as_deref(),
                    Some(AdditionalProperties::FreeForm(false))
                ) =>
            {
                let mut open = o.clone();
                open.additional_properties = None;
                Some((format!("#/components/schemas/{name}"), Schema::Object(open)))
            }
            _ => None,
        })
        .collect();
    for schema in components.schemas.values_mut() {
        if let RefOr::T(Schema::AllOf(all)) = schema {
            for part in &mut all.items {
                if let RefOr::Ref(r) = part
                    && let Some(open) = closed.get(&r.ref_location)
                {
                    *part = RefOr::T(open.clone());
                }
            }
        }
    }
}

/// A parameter (path, query, header) is text or absent, never JSON `null`:
/// `Option<T>` parameters become `T`, not required, instead of
/// `oneOf [null, T]` (a client would send the text `null`).
///
/// A header's schema is inlined, not a `$ref`: tools that build headers
/// read the schema in place (schemathesis took a `$ref`'d header for any
/// text).
fn params_not_null(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::path::ParameterIn;
    use utoipa::openapi::schema::{Schema, SchemaType, Type};
    let is_null = |s: &RefOr<Schema>| matches!(s, RefOr::T(Schema::Object(o)) if o.schema_type == SchemaType::Type(Type::Null));
    let components = doc.components.clone().unwrap_or_default();
    for item in doc.paths.paths.values_mut() {
        for (_, op) in operations_by_method(item) {
            for p in op.parameters.iter_mut().flatten() {
                if let Some(RefOr::T(Schema::OneOf(one))) = &p.schema
                    && one.items.len() == 2
                    && one.items.iter().any(is_null)
                    && let Some(t) = one.items.iter().find(|s| !is_null(s)).cloned()
                {
                    p.schema = Some(t);
                }
                if p.parameter_in == ParameterIn::Header
                    && let Some(RefOr::Ref(r)) = &p.schema
                    && let Some(name) = r.ref_location.strip_prefix("#/components/schemas/")
                    && let Some(schema) = components.schemas.get(name)
                {
                    p.schema = Some(schema.clone());
                }
            }
        }
    }
}

/// The document as served, encoded once.
#[derive(Debug, Clone)]
pub struct Document(Bytes);

impl Document {
    /// Encodes `doc`.
    pub fn new(doc: &utoipa::openapi::OpenApi) -> Self {
        // Serializing a tree of strings, maps and numbers cannot fail.
        Self(Bytes::from(doc.to_json().unwrap_or_default()))
    }
}

/// The OpenAPI document
///
/// `GET /api/v1/openapi.json` — this document (OpenAPI 3.1), generated
/// from the handlers. Served without the token: it holds no data.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "health",
    operation_id = "openapi",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object))
)]
pub async fn serve(Extension(doc): Extension<Document>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], doc.0).into_response()
}

/// The document as pretty JSON, for `orchestrator openapi`.
pub fn openapi_json() -> String {
    super::openapi().to_pretty_json().unwrap_or_default()
}
