//! Authentication with HS256 JWTs (`auth_secret`): the token's `sub` is the
//! user, its optional `groups` claim lists the groups the client may join
//! (an entry ending in `*` is a prefix), and `exp` and `nbf` are honoured
//! when present (60 s of clock skew allowed; a token without `exp` does
//! not expire; `iat` is not checked). Validation is `jsonwebtoken`'s; this
//! module only says which token to read and what the claims mean.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::protocol::identity;

/// Why a token was refused (HTTP 401 before the upgrade).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("a token is required: ?token=JWT or Authorization: Bearer JWT")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("the token's `sub` is not a valid user id")]
    BadSubject,
}

/// Who a valid token says the client is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    /// The groups the client may join (`None`: any).
    pub groups: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    groups: Option<Vec<String>>,
}

/// Checks tokens against the configured secret.
pub struct Authenticator {
    key: DecodingKey,
    validation: Validation,
}

impl Authenticator {
    pub fn new(secret: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        // `exp` is honoured when present, not required; `sub` is required.
        validation.required_spec_claims = ["sub".to_string()].into_iter().collect();
        // A token not valid yet is refused too (the same 60 s leeway).
        validation.validate_nbf = true;
        validation.validate_aud = false;
        Authenticator {
            key: DecodingKey::from_secret(secret.as_bytes()),
            validation,
        }
    }

    /// Verifies a token and reads its identity.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        if !identity::is_valid_user_id(&data.claims.sub) {
            return Err(AuthError::BadSubject);
        }
        Ok(Identity {
            user: data.claims.sub,
            groups: data.claims.groups,
        })
    }
}

/// Whether a `groups` claim lets a client join `group`.
pub fn group_allowed(allowed: Option<&[String]>, group: &str) -> bool {
    match allowed {
        None => true,
        Some(list) => list.iter().any(|entry| match entry.strip_suffix('*') {
            Some(prefix) => group.starts_with(prefix),
            None => entry == group,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    fn token(secret: &str, claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn valid_tokens_name_the_user_and_groups() {
        let auth = Authenticator::new("s3cret");
        let id = auth
            .verify(&token(
                "s3cret",
                json!({"sub":"alice","groups":["team-*","lobby"],"exp":now()+600}),
            ))
            .unwrap();
        assert_eq!(id.user, "alice");
        assert_eq!(
            id.groups.as_deref(),
            Some(&["team-*".to_string(), "lobby".to_string()][..])
        );
        let id = auth.verify(&token("s3cret", json!({"sub":"bob"}))).unwrap();
        assert_eq!((id.user.as_str(), id.groups), ("bob", None));
    }

    #[test]
    fn bad_tokens_are_refused() {
        let auth = Authenticator::new("s3cret");
        assert!(matches!(
            auth.verify(&token("other", json!({"sub":"a"}))),
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(
            auth.verify(&token("s3cret", json!({"sub":"a","exp":now()-3600}))),
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(
            auth.verify(&token("s3cret", json!({"name":"a"}))),
            Err(AuthError::Invalid(_))
        ));
        // Not valid before an hour from now; a minute's skew is allowed.
        assert!(matches!(
            auth.verify(&token("s3cret", json!({"sub":"a","nbf":now()+3600}))),
            Err(AuthError::Invalid(_))
        ));
        assert!(auth
            .verify(&token("s3cret", json!({"sub":"a","nbf":now()+30})))
            .is_ok());
        assert_eq!(
            auth.verify(&token("s3cret", json!({"sub":"a b"}))),
            Err(AuthError::BadSubject)
        );
        assert!(matches!(
            auth.verify("not.a.token"),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn group_claims_with_prefixes() {
        let list = ["team-*".to_string(), "lobby".to_string()];
        assert!(group_allowed(Some(&list), "team-red"));
        assert!(group_allowed(Some(&list), "lobby"));
        assert!(!group_allowed(Some(&list), "lobby2"));
        assert!(!group_allowed(Some(&list), "admins"));
        assert!(group_allowed(None, "anything"));
    }
}
