//! Finding objects the way docker does: by full ID, by name, then by unique ID prefix.

use std::borrow::Cow;
use std::collections::HashMap;

use imbl::OrdMap;

use super::error::ApiError;

pub fn find<'a, T>(
    map: &'a OrdMap<String, T>,
    key: &str,
    name_of: impl Fn(&T) -> &str,
    kind: &str,
) -> Result<&'a T, ApiError> {
    if let Some(v) = map.get(key) {
        return Ok(v);
    }
    if let Some(v) = map.values().find(|v| name_of(v) == key) {
        return Ok(v);
    }
    let mut prefixed = map
        .iter()
        .filter(|(id, _)| !key.is_empty() && id.starts_with(key));
    match (prefixed.next(), prefixed.next()) {
        (Some((_, v)), None) => Ok(v),
        (Some(_), Some(_)) => Err(ApiError::NotFound(format!(
            "{kind} {key} is ambiguous (more than one {kind} ID starts with it): give more characters"
        ))),
        _ => Err(ApiError::NotFound(format!("{kind} {key} not found"))),
    }
}

/// Docker's `filters` query parameter, checked against the keys one list accepts.
#[derive(Debug, Default)]
pub struct Filters(HashMap<String, Vec<String>>);

/// What an object offers one filter key; `Filters::matches` applies docker's rules to it.
pub enum Field<'a> {
    /// IDs and names: a value matches as a prefix, as docker matches them.
    Prefix(Cow<'a, str>),
    /// A value matches when it is equal.
    Exact(Cow<'a, str>),
    /// One of an enumeration (role, availability): docker accepts any case.
    Keyword(&'a str),
    /// Every value must hold, as `KEY` (present) or `KEY=VALUE`.
    Labels(Option<&'a HashMap<String, String>>),
    /// Any value the test accepts matches.
    Test(Box<dyn Fn(&str) -> bool + 'a>),
    /// Accepted and not applied.
    Any,
}

impl Filters {
    /// Parses `{"name":["a"],"service":{"b":true}}` (both shapes docker sends). Keys outside
    /// `allowed` are refused, as dockerd refuses them.
    pub fn parse(raw: Option<&str>, allowed: &[&str]) -> Result<Filters, ApiError> {
        let mut out = HashMap::new();
        let Some(raw) = raw.filter(|r| !r.is_empty()) else {
            return Ok(Filters(out));
        };
        let bad = |why: &str| {
            ApiError::BadRequest(format!(
                "invalid filters {raw:?}: {why}; give a JSON object such as {{\"name\":[\"web\"]}}"
            ))
        };
        let v: serde_json::Value = serde_json::from_str(raw).map_err(|e| bad(&e.to_string()))?;
        let obj = v.as_object().ok_or_else(|| bad("not an object"))?;
        for (k, vals) in obj {
            if !allowed.contains(&k.as_str()) {
                return Err(ApiError::BadRequest(format!(
                    "invalid filter '{k}': use one of {}",
                    allowed.join(", ")
                )));
            }
            let list = match vals {
                serde_json::Value::Array(a) => a
                    .iter()
                    .map(|x| x.as_str().map(String::from))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| bad(&format!("the values of '{k}' must be strings")))?,
                serde_json::Value::Object(o) => o.keys().cloned().collect(),
                serde_json::Value::String(s) => vec![s.clone()],
                _ => return Err(bad(&format!("the values of '{k}' must be strings"))),
            };
            out.insert(k.clone(), list);
        }
        Ok(Filters(out))
    }

    /// The values given for `key` (empty when the filter is absent).
    pub fn get(&self, key: &str) -> &[String] {
        self.0.get(key).map_or(&[], Vec::as_slice)
    }

    /// Refuses a value of `key` outside `accepted` (docker: "invalid filter 'role=boss'").
    pub fn check_values(&self, key: &str, accepted: &[&str]) -> Result<(), ApiError> {
        match self
            .get(key)
            .iter()
            .find(|v| !accepted.iter().any(|a| a.eq_ignore_ascii_case(v)))
        {
            Some(v) => Err(ApiError::BadRequest(format!(
                "invalid filter '{key}={v}': use one of {}",
                accepted.join(", ")
            ))),
            None => Ok(()),
        }
    }

    /// Every key given must hold; within one key any value may, except labels, which must
    /// all hold (docker's rules). `field` says what the object offers each key.
    pub fn matches<'a>(&self, field: impl Fn(&str) -> Field<'a>) -> bool {
        self.0.iter().all(|(k, vals)| match field(k) {
            Field::Prefix(s) => vals.iter().any(|v| s.starts_with(v.as_str())),
            Field::Exact(s) => vals.iter().any(|v| *v == s),
            Field::Keyword(s) => vals.iter().any(|v| v.eq_ignore_ascii_case(s)),
            Field::Labels(labels) => vals.iter().all(|w| {
                let got = |k: &str| labels.and_then(|l| l.get(k));
                match w.split_once('=') {
                    Some((k, v)) => got(k).is_some_and(|g| g == v),
                    None => got(w).is_some(),
                }
            }),
            Field::Test(test) => vals.iter().any(|v| test(v)),
            Field::Any => true,
        })
    }
}

#[derive(serde::Deserialize, Default)]
pub struct ListQuery {
    pub filters: Option<String>,
    pub status: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: &[&str] = &["id", "name", "label", "role"];

    fn labels() -> HashMap<String, String> {
        HashMap::from([
            ("zone".into(), "east".into()),
            ("ssd".into(), String::new()),
        ])
    }

    fn node<'a>(f: &'a Filters, labels: &'a HashMap<String, String>) -> bool {
        f.matches(|k| match k {
            "id" => Field::Prefix("abc123".into()),
            "name" => Field::Prefix("node2".into()),
            "label" => Field::Labels(Some(labels)),
            "role" => Field::Keyword("worker"),
            _ => Field::Any,
        })
    }

    #[test]
    fn both_shapes_docker_sends_parse_alike() {
        let l = labels();
        for raw in [
            r#"{"name":["node2"],"role":["worker"]}"#,
            r#"{"name":{"node2":true},"role":{"worker":true}}"#,
        ] {
            let f = Filters::parse(Some(raw), KEYS).unwrap();
            assert_eq!(f.get("name"), ["node2"]);
            assert!(node(&f, &l), "{raw}");
        }
    }

    #[test]
    fn values_of_one_key_are_alternatives_and_keys_must_all_hold() {
        let l = labels();
        let f = |raw: &str| node(&Filters::parse(Some(raw), KEYS).unwrap(), &l);
        assert!(f(r#"{"name":["node1","node2"]}"#));
        assert!(f(r#"{"id":["abc"],"name":["node"]}"#));
        assert!(!f(r#"{"id":["abd"],"name":["node"]}"#));
        assert!(f(r#"{"role":["WORKER"]}"#));
        assert!(!f(r#"{"role":["manager"]}"#));
    }

    #[test]
    fn labels_must_all_hold_by_key_or_key_and_value() {
        let l = labels();
        let f = |raw: &str| node(&Filters::parse(Some(raw), KEYS).unwrap(), &l);
        assert!(f(r#"{"label":["zone=east","ssd"]}"#));
        assert!(f(r#"{"label":["ssd="]}"#));
        assert!(!f(r#"{"label":["zone=east","gpu"]}"#));
        assert!(!f(r#"{"label":["zone=west"]}"#));
        let none = Filters::parse(Some(r#"{"label":["zone"]}"#), KEYS).unwrap();
        assert!(!none.matches(|_| Field::Labels(None)));
    }

    /// Refused as a bad request (a 400), the message naming what is accepted.
    #[test]
    fn unknown_keys_and_values_are_refused_naming_what_is_accepted() {
        match Filters::parse(Some(r#"{"color":["red"]}"#), KEYS) {
            Err(ApiError::BadRequest(m)) => assert!(
                m.contains("'color'") && m.contains("id, name, label, role"),
                "{m}"
            ),
            other => panic!("expected BadRequest, got {other:?}"),
        }
        let f = Filters::parse(Some(r#"{"role":["boss"]}"#), KEYS).unwrap();
        match f.check_values("role", &["manager", "worker"]) {
            Err(ApiError::BadRequest(m)) => {
                assert!(
                    m.contains("'role=boss'") && m.contains("manager, worker"),
                    "{m}"
                )
            }
            other => panic!("expected BadRequest, got {other:?}"),
        }
        for raw in ["[1]", r#"{"name":[1]}"#, "{"] {
            assert!(
                matches!(
                    Filters::parse(Some(raw), KEYS),
                    Err(ApiError::BadRequest(_))
                ),
                "{raw}"
            );
        }
    }

    /// By full ID, by name, by a unique prefix; an unknown or ambiguous key is not found.
    #[test]
    fn find_by_id_name_or_unique_prefix() {
        let map: OrdMap<String, (String, &str)> = [
            ("abc123".to_string(), ("abc123".to_string(), "web")),
            ("abd456".to_string(), ("abd456".to_string(), "db")),
        ]
        .into_iter()
        .collect();
        let find = |key: &str| find(&map, key, |v| v.1, "service").map(|v| v.0.clone());
        assert_eq!(find("abd456").unwrap(), "abd456");
        assert_eq!(find("web").unwrap(), "abc123");
        assert_eq!(find("abc").unwrap(), "abc123");
        match find("ab") {
            Err(ApiError::NotFound(m)) => assert!(m.contains("ambiguous"), "{m}"),
            other => panic!("expected NotFound, got {other:?}"),
        }
        assert!(matches!(find("zzz"), Err(ApiError::NotFound(_))));
        assert!(matches!(find(""), Err(ApiError::NotFound(_))));
    }
}
