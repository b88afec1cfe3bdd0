//! Names on the wire: user ids and group names, and the `?user=` query.

/// Longest user id or group name, in characters.
pub const NAME_MAX_CHARS: usize = 128;

/// A user id is 1–128 chars of `[A-Za-z0-9_.:@-]`.
pub fn is_valid_user_id(id: &str) -> bool {
    valid_name(id, |b| b.is_ascii_alphanumeric() || b"_.:@-".contains(&b))
}

/// A group name is 1–128 chars of `[A-Za-z0-9_.:@/-]`.
pub fn is_valid_group_name(name: &str) -> bool {
    valid_name(name, |b| {
        b.is_ascii_alphanumeric() || b"_.:@/-".contains(&b)
    })
}

fn valid_name(s: &str, allowed: impl Fn(u8) -> bool) -> bool {
    (1..=NAME_MAX_CHARS).contains(&s.len()) && s.bytes().all(allowed)
}

/// Why a `?user=` query was refused (HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("invalid user id: expected 1-128 characters of A-Z a-z 0-9 _ . : @ -")]
    InvalidUser,
    #[error("the `user` query parameter is given more than once")]
    DuplicateUser,
}

/// The user a connection asked to be, from its query string
/// (percent-decoded). `None` when absent: the server then assigns
/// `anon-<conn id>`.
pub fn user_from_query(query: &str) -> Result<Option<String>, IdentityError> {
    let mut found = None;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        if key == "user" {
            if found.is_some() {
                return Err(IdentityError::DuplicateUser);
            }
            if !is_valid_user_id(&value) {
                return Err(IdentityError::InvalidUser);
            }
            found = Some(value.into_owned());
        }
    }
    Ok(found)
}

/// The id given to a connection that did not name its user.
pub fn anonymous_user(conn_id: u64) -> String {
    format!("anon-{conn_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids() {
        assert!(is_valid_user_id("alice"));
        assert!(is_valid_user_id("a.b:c@d-e_f9"));
        assert!(is_valid_user_id(&"x".repeat(128)));
        assert!(!is_valid_user_id(&"x".repeat(129)));
        assert!(!is_valid_user_id(""));
        assert!(!is_valid_user_id("a b"));
        assert!(!is_valid_user_id("a/b"));
        assert!(!is_valid_user_id("é"));
    }

    #[test]
    fn group_names_allow_slash() {
        assert!(is_valid_group_name("room/1"));
        assert!(!is_valid_group_name("room 1"));
        assert!(!is_valid_group_name(""));
    }

    #[test]
    fn query_parsing() {
        assert_eq!(user_from_query(""), Ok(None));
        assert_eq!(user_from_query("x=1"), Ok(None));
        assert_eq!(user_from_query("user=bob"), Ok(Some("bob".into())));
        assert_eq!(
            user_from_query("a=1&user=bob%40example.com"),
            Ok(Some("bob@example.com".into()))
        );
        assert_eq!(user_from_query("user="), Err(IdentityError::InvalidUser));
        assert_eq!(user_from_query("user=a+b"), Err(IdentityError::InvalidUser));
        assert_eq!(
            user_from_query("user=a&user=b"),
            Err(IdentityError::DuplicateUser)
        );
    }
}
