//! Where a token says its holder is an administrator. By default the
//! `role` claim (`"admin"`); identity providers put roles elsewhere, so
//! `JWT_ROLE_CLAIM` names the claim: a top-level name, which may itself
//! contain dots or slashes (an Auth0 namespaced claim such as
//! `https://tickets.example.com/roles`), or else a dotted path into nested
//! claims (Keycloak's `realm_access.roles`). The claim may be a string or
//! an array of strings; `admin` among them marks an administrator, and
//! `events` a reader of the event feed (administrators read it too).

use serde_json::{Map, Value};

/// The role that grants administration.
pub const ADMIN_ROLE: &str = "admin";

/// The role that grants reading the event feed.
pub const EVENTS_ROLE: &str = "events";

/// Whether the claims grant the admin role, read at `path` (`None`: `role`).
pub fn is_admin(role: Option<&str>, other: &Map<String, Value>, path: Option<&str>) -> bool {
    has_role(role, other, path, ADMIN_ROLE)
}

/// Whether the claims grant `wanted`, read at `path` (`None`: `role`).
pub fn has_role(role: Option<&str>, other: &Map<String, Value>, path: Option<&str>, wanted: &str) -> bool {
    let Some(path) = path.filter(|p| !p.is_empty() && *p != "role") else {
        return role == Some(wanted);
    };
    let found = other.get(path).or_else(|| {
        let mut parts = path.split('.');
        let first = other.get(parts.next()?)?;
        parts.try_fold(first, |value, part| value.get(part))
    });
    match found {
        Some(Value::String(role)) => role == wanted,
        Some(Value::Array(roles)) => roles.iter().any(|r| r.as_str() == Some(wanted)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn the_default_is_the_role_claim() {
        assert!(is_admin(Some("admin"), &Map::new(), None));
        assert!(!is_admin(Some("user"), &Map::new(), None));
        assert!(is_admin(Some("admin"), &Map::new(), Some("role")));
    }

    #[test]
    fn keycloak_realm_roles_and_auth0_namespaced_claims() {
        let keycloak = claims(json!({"realm_access": {"roles": ["offline_access", "admin"]}}));
        assert!(is_admin(None, &keycloak, Some("realm_access.roles")));
        assert!(!is_admin(Some("admin"), &keycloak, Some("resource_access.roles")), "only the named claim counts");
        let auth0 = claims(json!({"https://tickets.example.com/roles": ["admin"]}));
        assert!(is_admin(None, &auth0, Some("https://tickets.example.com/roles")));
        let plain = claims(json!({"groups": "admin"}));
        assert!(is_admin(None, &plain, Some("groups")));
        let wrong_type = claims(json!({"groups": {"admin": true}}));
        assert!(!is_admin(None, &wrong_type, Some("groups")));
    }

    #[test]
    fn the_events_role_is_read_where_the_admin_role_is() {
        assert!(has_role(Some("events"), &Map::new(), None, EVENTS_ROLE));
        assert!(!has_role(Some("admin"), &Map::new(), None, EVENTS_ROLE));
        let keycloak = claims(json!({"realm_access": {"roles": ["events"]}}));
        assert!(has_role(None, &keycloak, Some("realm_access.roles"), EVENTS_ROLE));
        assert!(!is_admin(None, &keycloak, Some("realm_access.roles")));
    }
}
