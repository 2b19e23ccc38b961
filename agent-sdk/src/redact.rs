//! Redis URLs with their secrets taken out, for logs, `Debug` output and
//! error messages.
//!
//! The redaction must hold for URLs that do not parse too: a URL with a raw
//! `/`, `#` or `?` in its password is exactly the one an operator gets
//! wrong, and the error that says so must not print it. So nothing here
//! parses the URL; it marks the bytes that could be secret, conservatively,
//! and replaces each marked run by `***`:
//!
//! - everything between `://` (or the start, for text that is not a URL) and
//!   the **last** `@`, except a user name that plainly is one (`user:` right
//!   after `://`): a password may hold raw `@`, `/`, `#` and `?`;
//! - the value of every `pass` / `password` query parameter (keys compared
//!   percent-decoded and case-insensitively), up to the next `&` that starts
//!   another `key=value` parameter: redis-rs reads `pass` from unix-socket
//!   URLs, and a raw `&` or `#` inside the value must not end the redaction.

/// Query keys whose values are passwords.
const SECRET_KEYS: [&str; 2] = ["pass", "password"];

/// The text that replaces each secret run.
const MASK: &str = "***";

/// Replaces every password form of a Redis URL by `***`; see the module docs.
///
/// ```
/// use agent_sdk::redact_url;
/// assert_eq!(redact_url("redis://user:s3cret@h:6379/0"), "redis://user:***@h:6379/0");
/// assert_eq!(redact_url("unix:///run/redis.sock?pass=s3cret&db=1"), "unix:///run/redis.sock?pass=***&db=1");
/// ```
pub fn redact_url(url: &str) -> String {
    let mut secret = vec![false; url.len()];
    mark_credentials(url, &mut secret);
    mark_query_secrets(url, &mut secret);
    let mut out = String::with_capacity(url.len());
    let mut in_secret = false;
    for (i, ch) in url.char_indices() {
        // Marked ranges start and end at ASCII bytes, so a character is
        // either wholly inside a range or wholly outside it.
        if secret[i] {
            if !in_secret {
                out.push_str(MASK);
                in_secret = true;
            }
        } else {
            in_secret = false;
            out.push(ch);
        }
    }
    out
}

/// Marks what lies between the scheme and the last `@`.
fn mark_credentials(url: &str, secret: &mut [bool]) {
    let start = url.find("://").map_or(0, |i| i + 3);
    let Some(at) = url[start..].rfind('@').map(|i| start + i) else {
        return;
    };
    let creds = &url[start..at];
    // `user:` is kept only when it is the URL's user name for sure: right
    // after `://`, with nothing in it that belongs to a path or a query (then
    // the '@' was not the end of the credentials, and the "user" may be part
    // of something else).
    let keep = match creds.find(':') {
        Some(colon) if start > 0 && !creds[..colon].contains(['/', '?', '#', '&', '=']) => {
            colon + 1
        }
        _ => 0,
    };
    secret[start + keep..at].fill(true);
}

/// Marks the values of `pass` / `password` parameters, wherever a `?` or `&`
/// starts one (a `?` may sit inside a password, so not only after the first).
fn mark_query_secrets(url: &str, secret: &mut [bool]) {
    for (i, b) in url.bytes().enumerate() {
        if b != b'?' && b != b'&' {
            continue;
        }
        let param = &url[i + 1..];
        let Some(eq) = param
            .find(['=', '&'])
            .filter(|&e| param.as_bytes()[e] == b'=')
        else {
            continue;
        };
        if !is_secret_key(&param[..eq]) {
            continue;
        }
        let value_start = i + 1 + eq + 1;
        let value_end = value_start + secret_value_len(&url[value_start..]);
        secret[value_start..value_end].fill(true);
    }
}

/// Length of a secret value at the start of `s`: up to the first `&` that
/// starts another `key=` parameter (a plain name), else the whole rest.
fn secret_value_len(s: &str) -> usize {
    let mut from = 0;
    while let Some(amp) = s[from..].find('&').map(|a| from + a) {
        let next = &s[amp + 1..];
        let key_len = next
            .find('=')
            .filter(|&e| e > 0 && next[..e].bytes().all(is_key_byte));
        if key_len.is_some() {
            return amp;
        }
        from = amp + 1;
    }
    s.len()
}

fn is_key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'%'
}

/// Whether a raw query key names a password: percent-decoded (as redis-rs
/// decodes keys) and compared case-insensitively.
fn is_secret_key(raw: &str) -> bool {
    let decoded = percent_decode(raw).to_ascii_lowercase();
    SECRET_KEYS.iter().any(|k| decoded == *k)
}

/// `%XX` sequences decoded and `+` read as a space, as form-encoded keys
/// are; anything malformed is kept as written.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_forms() {
        assert_eq!(
            redact_url("redis://:s3cret@h:7000/0"),
            "redis://:***@h:7000/0"
        );
        assert_eq!(
            redact_url("redis://user:s3cret@h:7000"),
            "redis://user:***@h:7000"
        );
        assert_eq!(redact_url("rediss://user:s3cret@h"), "rediss://user:***@h");
        assert_eq!(redact_url("rediss://user:p@ss@h"), "rediss://user:***@h");
        assert_eq!(redact_url("redis://h:7000"), "redis://h:7000");
        assert_eq!(
            redact_url("redis://127.0.0.1:6379/2"),
            "redis://127.0.0.1:6379/2"
        );
    }

    #[test]
    fn a_user_without_a_password_is_hidden_too() {
        // `redis://word@h` is a user name to redis-rs, but people write a
        // bare password there; hiding a user name costs nothing.
        assert_eq!(redact_url("redis://s3cret@h"), "redis://***@h");
    }

    #[test]
    fn raw_slash_at_hash_and_question_mark_in_a_password() {
        assert_eq!(
            redact_url("redis://user:pa/ss@host/0"),
            "redis://user:***@host/0"
        );
        assert_eq!(
            redact_url("redis://:pa#ss@host:1/0"),
            "redis://:***@host:1/0"
        );
        assert_eq!(redact_url("redis://:pa?ss@host"), "redis://:***@host");
        assert_eq!(redact_url("redis://:p@s@s@host"), "redis://:***@host");
    }

    #[test]
    fn percent_encoded_passwords() {
        assert_eq!(
            redact_url("redis://:p%40ss%2Fw%23rd@h:1"),
            "redis://:***@h:1"
        );
        assert_eq!(
            redact_url("unix:///s.sock?pass=p%40ss%26x"),
            "unix:///s.sock?pass=***"
        );
    }

    #[test]
    fn unix_socket_query_passwords() {
        assert_eq!(
            redact_url("redis+unix:///run/redis.sock?pass=s3cret"),
            "redis+unix:///run/redis.sock?pass=***"
        );
        assert_eq!(
            redact_url("unix:///run/redis.sock?pass=s3cret&db=1"),
            "unix:///run/redis.sock?pass=***&db=1"
        );
        assert_eq!(
            redact_url("unix:///run/redis.sock?db=1&password=s3cret"),
            "unix:///run/redis.sock?db=1&password=***"
        );
        // Keys as redis-rs reads them: percent-decoded; and in any case.
        assert_eq!(
            redact_url("unix:///s?p%61ss=s3cret"),
            "unix:///s?p%61ss=***"
        );
        assert_eq!(redact_url("unix:///s?PASS=s3cret"), "unix:///s?PASS=***");
        // A raw '&' or '#' inside the value does not end the redaction;
        // the next real parameter does.
        assert_eq!(
            redact_url("unix:///s?pass=s3&cret#x&db=1"),
            "unix:///s?pass=***&db=1"
        );
        // Not a password: left alone.
        assert_eq!(
            redact_url("unix:///s?db=1&passage=x"),
            "unix:///s?db=1&passage=x"
        );
    }

    #[test]
    fn text_that_is_not_a_url() {
        assert_eq!(redact_url("s3cret@h:6379"), "***@h:6379");
        assert_eq!(redact_url(":s3cret@h"), "***@h");
        assert_eq!(redact_url("h:6379?pass=s3cret"), "h:6379?pass=***");
        assert_eq!(redact_url(""), "");
        assert_eq!(redact_url("just words"), "just words");
        // An '@' in a query hides everything before it: conservative.
        assert!(!redact_url("redis://:pw@h/?x=@").contains("pw"));
        assert_eq!(redact_url("unix:///s?pass=a@b&db=1"), "unix://***&db=1");
    }

    /// Every form, with passwords made of two words joined by each character
    /// that breaks naive redaction, raw and percent-encoded: neither word
    /// may survive.
    #[test]
    fn no_part_of_any_password_survives() {
        let joins = [
            "", "/", "@", "#", "?", ":", "&", "=", "%", "%40", "%2F", "%23", "%3A", "%26", "+",
            " ", "@/#?", "ü",
        ];
        let forms = [
            "redis://:{}@h:1/0",
            "redis://user:{}@h:1",
            "rediss://user:{}@h:1/3",
            "redis://{}@h",
            "redis+unix:///run/r.sock?pass={}",
            "unix:///run/r.sock?pass={}&db=1",
            "unix:///run/r.sock?db=1&password={}",
            "unix:///run/r.sock?db=1&password={}&protocol=resp3",
            "redis://:{}@h/?x=@",
            "{}@h:1",
            "http://:{}@h",
        ];
        for join in joins {
            let password = format!("Alpha7{join}Bravo9");
            for form in forms {
                if form == "redis://{}@h" && join == ":" {
                    // `redis://Alpha7:Bravo9@h` is user Alpha7 for sure.
                    continue;
                }
                let url = form.replace("{}", &password);
                let out = redact_url(&url);
                for word in ["Alpha7", "Bravo9"] {
                    assert!(!out.contains(word), "{url:?} -> {out:?}");
                }
                assert!(out.contains(MASK), "{url:?} -> {out:?}");
            }
        }
    }
}
