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
pub fn parse_filters(
    raw: Option<&str>,
) -> Result<std::collections::HashMap<String, Vec<String>>, ApiError> {
    let mut out = std::collections::HashMap::new();
    let Some(raw) = raw.filter(|r| !r.is_empty()) else {
        return Ok(out);
    };
    let v: serde_json::Value = serde_json::from_str(raw)
        .map_err(|e| ApiError::BadRequest(format!("invalid filters {raw:?}: {e}")))?;
    let obj = v.as_object().ok_or_else(|| {
        ApiError::BadRequest(format!("invalid filters {raw:?}: expected an object"))
    })?;
    for (k, vals) in obj {
        let list = match vals {
            serde_json::Value::Array(a) => a
                .iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect(),
            serde_json::Value::Object(o) => o.keys().cloned().collect(),
            serde_json::Value::String(s) => vec![s.clone()],
            _ => Vec::new(),
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
