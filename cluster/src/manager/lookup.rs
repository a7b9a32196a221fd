//! Finding objects the way docker does: by full ID, by name, then by unique ID prefix.

use imbl::OrdMap;

use super::ApiError;

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

/// Docker's `filters` query parameter: `{"name":["a"],"service":{"b":true}}` (both shapes).
/// Keys outside `allowed` are refused, as dockerd refuses them.
pub fn parse_filters(
    raw: Option<&str>,
    allowed: &[&str],
) -> Result<std::collections::HashMap<String, Vec<String>>, ApiError> {
    let mut out = std::collections::HashMap::new();
    let Some(raw) = raw.filter(|r| !r.is_empty()) else {
        return Ok(out);
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
    Ok(out)
}

#[derive(serde::Deserialize, Default)]
pub struct ListQuery {
    pub filters: Option<String>,
    pub status: Option<bool>,
}

/// Docker's `label` filter: every value must match, as `KEY` (present) or `KEY=VALUE`.
pub fn labels_match<'a>(labels: impl Fn(&str) -> Option<&'a str>, wanted: &[String]) -> bool {
    wanted.iter().all(|w| match w.split_once('=') {
        Some((k, v)) => labels(k) == Some(v),
        None => labels(w).is_some(),
    })
}
