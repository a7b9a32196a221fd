//! Assertions a walkthrough makes beyond "the output looks like this": written after a block as
//! `<!-- expect: KIND ARGS -->` and checked against the block's RAW output, before
//! normalisation hides the very values they are about (names, addresses).

use regex::Regex;

use super::words::split_words;

#[derive(Clone, Debug, PartialEq)]
pub enum Assertion {
    /// `rotation KEY N`: each command's output carries a JSON string `KEY`; over the block the
    /// values take exactly N distinct values, equally often, never the same twice in a row.
    /// This is what round-robin load balancing looks like from the client.
    Rotation { key: String, distinct: usize },
    /// `lines REGEX COUNT`: exactly COUNT lines of the block's output match REGEX.
    Lines { regex: String, count: usize },
    /// `json-len PATH LEN`: the last command printed JSON whose value at PATH (dot-separated
    /// keys and array indexes, e.g. `0.Endpoint.VirtualIPs`) is an array of LEN items.
    JsonLen { path: String, len: usize },
}

impl std::fmt::Display for Assertion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Assertion::Rotation { key, distinct } => write!(f, "rotation {key:?} {distinct}"),
            Assertion::Lines { regex, count } => write!(f, "lines {regex:?} {count}"),
            Assertion::JsonLen { path, len } => write!(f, "json-len {path} {len}"),
        }
    }
}

impl Assertion {
    pub fn parse(text: &str) -> Result<Assertion, String> {
        let words = split_words(text)
            .ok_or_else(|| format!("cannot split assertion {text:?} into words"))?;
        let number = |w: &str| {
            w.parse::<usize>()
                .map_err(|_| format!("expected a number, got {w:?} in {text:?}"))
        };
        match words.iter().map(String::as_str).collect::<Vec<_>>()[..] {
            ["rotation", key, n] => Ok(Assertion::Rotation {
                key: key.into(),
                distinct: number(n)?.max(1),
            }),
            ["lines", re, n] => {
                Regex::new(re).map_err(|e| format!("bad regex {re:?}: {e}"))?;
                Ok(Assertion::Lines {
                    regex: re.into(),
                    count: number(n)?,
                })
            }
            ["json-len", path, n] => Ok(Assertion::JsonLen {
                path: path.into(),
                len: number(n)?,
            }),
            _ => Err(format!(
                "unknown assertion {text:?}; use `rotation KEY N`, `lines REGEX COUNT` or \
                 `json-len PATH LEN`"
            )),
        }
    }

    /// `outputs` holds the raw output of each command of the block, in order.
    pub fn check(&self, outputs: &[String]) -> Result<(), String> {
        match self {
            Assertion::Rotation { key, distinct } => check_rotation(key, *distinct, outputs),
            Assertion::Lines { regex, count } => {
                let re = Regex::new(regex).map_err(|e| e.to_string())?;
                let seen = outputs
                    .iter()
                    .flat_map(|o| o.lines())
                    .filter(|l| re.is_match(l.trim_end_matches('\r')))
                    .count();
                if seen == *count {
                    Ok(())
                } else {
                    Err(format!("{seen} lines match {regex:?}, expected {count}"))
                }
            }
            Assertion::JsonLen { path, len } => {
                let last = outputs.last().map(String::as_str).unwrap_or("");
                let value: serde_json::Value =
                    serde_json::from_str(last).map_err(|e| format!("output is not JSON: {e}"))?;
                let mut at = &value;
                for part in path.split('.') {
                    let next = match part.parse::<usize>() {
                        Ok(i) => at.get(i),
                        Err(_) => at.get(part),
                    };
                    at = next.ok_or_else(|| format!("no {part:?} on the way to {path}"))?;
                }
                let n = at
                    .as_array()
                    .ok_or_else(|| format!("{path} is not an array"))?
                    .len();
                if n == *len {
                    Ok(())
                } else {
                    Err(format!("{path} has {n} entries, expected {len}"))
                }
            }
        }
    }
}

fn check_rotation(key: &str, distinct: usize, outputs: &[String]) -> Result<(), String> {
    let re = Regex::new(&format!(r#""{}"\s*:\s*"([^"]*)""#, regex::escape(key)))
        .map_err(|e| e.to_string())?;
    let values = outputs
        .iter()
        .enumerate()
        .map(|(i, o)| {
            re.captures(o)
                .and_then(|c| c.get(1))
                .map(|m| m.as_str().to_string())
                .ok_or_else(|| format!("response {} has no {key:?}", i + 1))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let shown = values.join(", ");
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for v in &values {
        match counts.iter_mut().find(|(k, _)| k == v) {
            Some((_, n)) => *n += 1,
            None => counts.push((v, 1)),
        }
    }
    if counts.len() != distinct {
        return Err(format!(
            "{} distinct {key:?} values, expected {distinct}: {shown}",
            counts.len()
        ));
    }
    if values.len() % distinct != 0 || counts.iter().any(|(_, n)| *n != values.len() / distinct) {
        return Err(format!("{key:?} values are not spread evenly: {shown}"));
    }
    if let Some(w) = values.windows(2).position(|w| w[0] == w[1]) {
        return Err(format!(
            "{key:?} {:?} answered twice in a row (responses {} and {}): {shown}",
            values[w],
            w + 1,
            w + 2
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn es(names: &[&str]) -> Vec<String> {
        names
            .iter()
            .map(|n| {
                format!("{{\n  \"name\" : \"{n}\",\n  \"cluster_name\" : \"elasticsearch\"\n}}")
            })
            .collect()
    }

    fn rotation() -> Assertion {
        Assertion::parse(r#"rotation "name" 3"#).expect("parses")
    }

    #[test]
    fn rotation_passes_on_round_robin() {
        let out = es(&[
            "Landslide",
            "Freedom Ring",
            "Droom",
            "Landslide",
            "Freedom Ring",
            "Droom",
        ]);
        assert_eq!(rotation().check(&out), Ok(()));
    }

    #[test]
    fn rotation_fails_on_repeat_uneven_or_wrong_count() {
        let twice = es(&["a", "a", "b", "c", "b", "c"]);
        assert!(
            rotation()
                .check(&twice)
                .unwrap_err()
                .contains("twice in a row")
        );
        let uneven = es(&["a", "b", "a", "c", "a", "b"]);
        assert!(rotation().check(&uneven).unwrap_err().contains("evenly"));
        let two = es(&["a", "b", "a", "b", "a", "b"]);
        assert!(rotation().check(&two).unwrap_err().contains("2 distinct"));
        let mut broken = es(&["a", "b", "c", "a", "b"]);
        broken.push("curl: (7) Failed to connect".into());
        assert!(
            rotation()
                .check(&broken)
                .unwrap_err()
                .contains("response 6")
        );
    }

    #[test]
    fn lines_counts_matching_lines() {
        let a = Assertion::parse("lines '^unreachable$' 1").expect("parses");
        assert_eq!(a.check(&["unreachable\n".into()]), Ok(()));
        assert!(a.check(&["<html>".into()]).is_err());
        assert!(Assertion::parse("lines ( 1").is_err());
    }

    #[test]
    fn json_len_follows_path() {
        let inspect = r#"[{"Endpoint": {"VirtualIPs": [
            {"NetworkID": "a", "Addr": "10.255.0.4/16"},
            {"NetworkID": "b", "Addr": "10.0.0.5/24"}]}}]"#;
        let two = Assertion::parse("json-len 0.Endpoint.VirtualIPs 2").expect("parses");
        assert_eq!(two.check(&[inspect.into()]), Ok(()));
        let three = Assertion::parse("json-len 0.Endpoint.VirtualIPs 3").expect("parses");
        assert!(
            three
                .check(&[inspect.into()])
                .unwrap_err()
                .contains("2 entries")
        );
        assert!(two.check(&["not json".into()]).is_err());
    }

    #[test]
    fn unknown_assertion_is_an_error() {
        assert!(Assertion::parse("sometimes 3").is_err());
    }
}
