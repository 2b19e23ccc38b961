//! The bodies of `POST /dlq/{type}/replay` and `/purge`, one type each so
//! an option of the other operation is an unknown field (422), and their
//! schemas: the fields, plus a `oneOf` that says what the handlers check —
//! exactly one selection (`ids`, `all: true`, a filter, and for purge
//! `older_than`).

use super::SelectionRequest;
use crate::api::doc::formats::{DurationText, EntryIdText, SinceText};
use serde::Deserialize;
use std::borrow::Cow;
use utoipa::openapi::schema::{AllOfBuilder, ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::{RefOr, schema::SchemaType};
use utoipa::{PartialSchema, ToSchema};

/// Body of `POST /dlq/{type}/replay`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayBody {
    /// These entry ids (1–10,000).
    #[schema(value_type = Option<Vec<EntryIdText>>, min_items = 1, max_items = 10000)]
    #[serde(default)]
    ids: Option<Vec<String>>,
    /// Every dead letter of the type.
    #[serde(default)]
    all: bool,
    /// Only errors containing this text.
    #[serde(default)]
    error_contains: Option<String>,
    /// Only this workflow's.
    #[serde(default)]
    workflow: Option<String>,
    /// Only those failed since (`2h`, or a UTC time).
    #[schema(value_type = Option<SinceText>)]
    #[serde(default)]
    since: Option<String>,
    /// Report what would move, move nothing.
    #[serde(default)]
    dry_run: bool,
    /// Replay tasks of workflows that have ended too (left in the DLQ
    /// otherwise: their results would change nothing).
    #[serde(default)]
    force: bool,
}

/// Body of `POST /dlq/{type}/purge`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PurgeBody {
    /// These entry ids (1–10,000).
    #[schema(value_type = Option<Vec<EntryIdText>>, min_items = 1, max_items = 10000)]
    #[serde(default)]
    ids: Option<Vec<String>>,
    /// Every dead letter of the type.
    #[serde(default)]
    all: bool,
    /// Those dead-lettered more than this long ago (`7d`).
    #[schema(value_type = Option<DurationText>, example = "7d")]
    #[serde(default)]
    older_than: Option<String>,
    /// Only errors containing this text.
    #[serde(default)]
    error_contains: Option<String>,
    /// Only this workflow's.
    #[serde(default)]
    workflow: Option<String>,
    /// Only those failed since (`2h`, or a UTC time).
    #[schema(value_type = Option<SinceText>)]
    #[serde(default)]
    since: Option<String>,
}

impl From<ReplayBody> for SelectionRequest {
    fn from(b: ReplayBody) -> Self {
        Self {
            ids: b.ids,
            all: b.all,
            older_than: None,
            error_contains: b.error_contains,
            workflow: b.workflow,
            since: b.since,
            dry_run: b.dry_run,
            force: b.force,
        }
    }
}

impl From<PurgeBody> for SelectionRequest {
    fn from(b: PurgeBody) -> Self {
        Self {
            ids: b.ids,
            all: b.all,
            older_than: b.older_than,
            error_contains: b.error_contains,
            workflow: b.workflow,
            since: b.since,
            dry_run: false,
            force: false,
        }
    }
}

/// `{"required": [field], "properties": {field: schema}}`.
fn given(field: &str, schema: impl Into<RefOr<Schema>>) -> Schema {
    ObjectBuilder::new()
        .required(field)
        .property(field, schema)
        .into()
}

fn string() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(SchemaType::Type(Type::String))
}

/// `fields` and exactly one of the selections: `ids` as an array, `all`
/// as `true`, any filter as a string, and `older_than` when `with_age`.
fn exactly_one(fields: RefOr<Schema>, with_age: bool, description: &str) -> RefOr<Schema> {
    let filters = utoipa::openapi::schema::AnyOfBuilder::new()
        .item(given("error_contains", string()))
        .item(given("workflow", string()))
        .item(given("since", string()));
    let mut one = OneOfBuilder::new()
        .item(given(
            "ids",
            ObjectBuilder::new().schema_type(SchemaType::Type(Type::Array)),
        ))
        .item(given(
            "all",
            ObjectBuilder::new()
                .schema_type(SchemaType::Type(Type::Boolean))
                .enum_values(Some([true])),
        ))
        .item(filters);
    if with_age {
        one = one.item(given("older_than", string()));
    }
    AllOfBuilder::new()
        .description(Some(description))
        .item(fields)
        .item(one)
        .into()
}

/// The replay body's schema: [`ReplayBody`] and exactly one selection.
#[derive(Debug)]
pub struct ReplaySelection;

impl PartialSchema for ReplaySelection {
    fn schema() -> RefOr<Schema> {
        exactly_one(
            ReplayBody::schema(),
            false,
            "Exactly one of `ids`, `all: true`, or filters (`error_contains`, `workflow`, \
             `since`, together or alone); `dry_run` and `force` optional",
        )
    }
}

impl ToSchema for ReplaySelection {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("DeadLetterReplay")
    }
}

/// The purge body's schema: [`PurgeBody`] and exactly one selection.
#[derive(Debug)]
pub struct PurgeSelection;

impl PartialSchema for PurgeSelection {
    fn schema() -> RefOr<Schema> {
        exactly_one(
            PurgeBody::schema(),
            true,
            "Exactly one of `ids`, `all: true`, `older_than`, or filters (`error_contains`, \
             `workflow`, `since`, together or alone)",
        )
    }
}

impl ToSchema for PurgeSelection {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("DeadLetterPurge")
    }
}
