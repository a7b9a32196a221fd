//! docker's `--format`: Go templates (through gtmpl) over the JSON shape of what a command
//! lists or inspects, with docker's own additions: a leading `table` prints a header and
//! aligned columns, `\t` and `\n` in the format are tab and newline, `{{json X}}` prints X as
//! JSON, and the words `json` and `table` alone select docker's JSON lines and default table.

use gtmpl::{Context, Func, FuncError, Template, Value};

/// What a `--format` asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    /// A Go template; `table` says it had docker's `table` prefix.
    Template {
        text: String,
        table: bool,
    },
}

/// The `--format` value parser: a template that does not parse is refused before any request.
pub fn parse(s: &str) -> Result<Format, String> {
    match s.trim() {
        "" | "table" => return Ok(Format::Table),
        "json" => return Ok(Format::Json),
        _ => {}
    }
    let (text, table) = match s.trim_start().strip_prefix("table") {
        Some(rest) if rest.starts_with([' ', '\t']) || rest.starts_with("\\t") => (rest, true),
        _ => (s, false),
    };
    let text = text.trim().replace("\\t", "\t").replace("\\n", "\n");
    compile(&text).map_err(|e| format!("template parsing error: {e}"))?;
    Ok(Format::Template { text, table })
}

fn compile(text: &str) -> Result<Template, String> {
    let mut t = Template::default();
    let extra: [(&str, Func); 5] = [
        ("json", json),
        ("upper", upper),
        ("lower", lower),
        ("join", join),
        ("title", title),
    ];
    t.add_funcs(&extra);
    t.parse(text).map_err(|e| e.to_string())?;
    Ok(t)
}

/// Renders `value` (a row or an inspected object, as JSON) through the template.
pub fn render(text: &str, value: &serde_json::Value) -> anyhow::Result<String> {
    let t = compile(text).map_err(|e| anyhow::anyhow!("template parsing error: {e}"))?;
    t.render(&Context::from(to_gtmpl(value)))
        .map_err(|e| anyhow::anyhow!("template: executing {text:?}: {e}"))
}

/// The header docker prints over a `table` template: each field's name in capitals, words
/// split where the case changes (`CurrentState` -> `CURRENT STATE`).
pub fn header(text: &str, fields: &[&str]) -> anyhow::Result<String> {
    let names: serde_json::Map<String, serde_json::Value> = fields
        .iter()
        .map(|f| (f.to_string(), serde_json::Value::String(header_name(f))))
        .collect();
    render(text, &serde_json::Value::Object(names))
}

fn header_name(field: &str) -> String {
    let mut out = String::new();
    let chars: Vec<char> = field.chars().collect();
    for (i, c) in chars.iter().enumerate() {
        let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
        if i > 0 && c.is_uppercase() && (chars[i - 1].is_lowercase() || next_lower) {
            out.push(' ');
        }
        out.extend(c.to_uppercase());
    }
    out
}

/// Prints rows the way a `--format` asks: docker's default table (`cells`), JSON lines or a
/// template over `fields` (with a header and aligned columns for `table ...`).
pub struct Printer {
    format: Format,
    fields: Vec<&'static str>,
    table: crate::render::Table,
    custom: Vec<String>,
}

impl Printer {
    /// `fields`: the row's field names, as in its JSON line; `header`: the default table's.
    pub fn new(format: &Format, fields: &[&'static str], header: &[&str]) -> Printer {
        Printer {
            format: format.clone(),
            fields: fields.to_vec(),
            table: crate::render::Table::new(header),
            custom: Vec::new(),
        }
    }

    pub fn row(
        &mut self,
        values: Vec<serde_json::Value>,
        cells: Vec<String>,
    ) -> anyhow::Result<()> {
        let fields: Vec<(&str, serde_json::Value)> =
            self.fields.iter().copied().zip(values).collect();
        match &self.format {
            Format::Table => self.table.row(cells),
            Format::Json => println!("{}", crate::render::json_line(&fields)),
            Format::Template { text, table } => {
                let map: serde_json::Map<String, serde_json::Value> = fields
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect();
                let line = render(text, &serde_json::Value::Object(map))?;
                if *table {
                    self.custom.push(line);
                } else {
                    println!("{line}");
                }
            }
        }
        Ok(())
    }

    pub fn finish(self) -> anyhow::Result<()> {
        match &self.format {
            Format::Table => self.table.print()?,
            Format::Template { text, table: true } => {
                let head = header(text, &self.fields)?;
                let mut out = crate::render::Table::new(&head.split('\t').collect::<Vec<_>>());
                for line in self.custom {
                    out.row(line.split('\t').map(String::from).collect());
                }
                out.print()?;
            }
            _ => {}
        }
        Ok(())
    }
}

fn to_gtmpl(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Nil,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => Value::from(u),
            (_, Some(i), _) => Value::from(i),
            (_, _, Some(f)) => Value::from(f),
            _ => Value::Nil,
        },
        serde_json::Value::String(s) => Value::String(s.clone()),
        serde_json::Value::Array(a) => Value::Array(a.iter().map(to_gtmpl).collect()),
        serde_json::Value::Object(o) => {
            Value::Map(o.iter().map(|(k, v)| (k.clone(), to_gtmpl(v))).collect())
        }
    }
}

fn to_json(v: &Value) -> serde_json::Value {
    match v {
        Value::NoValue | Value::Nil | Value::Function(_) => serde_json::Value::Null,
        Value::Bool(b) => (*b).into(),
        Value::String(s) => s.clone().into(),
        Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => u.into(),
            (_, Some(i), _) => i.into(),
            (_, _, Some(f)) => f.into(),
            _ => serde_json::Value::Null,
        },
        Value::Array(a) => a.iter().map(to_json).collect(),
        // Sorted keys, like Go's encoder on maps.
        Value::Map(m) | Value::Object(m) => {
            let sorted: std::collections::BTreeMap<&String, serde_json::Value> =
                m.iter().map(|(k, v)| (k, to_json(v))).collect();
            serde_json::to_value(sorted).unwrap_or_default()
        }
    }
}

fn one<'a>(name: &str, args: &'a [Value]) -> Result<&'a Value, FuncError> {
    match args {
        [v] => Ok(v),
        _ => Err(FuncError::ExactlyXArgs(name.into(), 1)),
    }
}

fn string_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn json(args: &[Value]) -> Result<Value, FuncError> {
    let v = one("json", args)?;
    Ok(Value::String(to_json(v).to_string()))
}

fn upper(args: &[Value]) -> Result<Value, FuncError> {
    Ok(Value::String(string_of(one("upper", args)?).to_uppercase()))
}

fn lower(args: &[Value]) -> Result<Value, FuncError> {
    Ok(Value::String(string_of(one("lower", args)?).to_lowercase()))
}

fn title(args: &[Value]) -> Result<Value, FuncError> {
    let s = string_of(one("title", args)?);
    let mut c = s.chars();
    Ok(Value::String(match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => s,
    }))
}

fn join(args: &[Value]) -> Result<Value, FuncError> {
    let [Value::Array(items), sep] = args else {
        return Err(FuncError::Generic(
            "join needs a list and a separator".into(),
        ));
    };
    let parts: Vec<String> = items.iter().map(string_of).collect();
    Ok(Value::String(parts.join(&string_of(sep))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service() -> serde_json::Value {
        json!({
            "ID": "abc",
            "Spec": {"Name": "web", "Labels": {"b": "2", "a": "1"}},
            "Endpoint": {"VirtualIPs": [{"NetworkID": "n1", "Addr": "10.0.0.2/24"}]},
            "Replicas": 3,
        })
    }

    fn run(format: &str, v: &serde_json::Value) -> String {
        match parse(format).unwrap() {
            Format::Template { text, .. } => render(&text, v).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_forms_docker_users_type() {
        let s = service();
        assert_eq!(run("{{.Spec.Name}}", &s), "web");
        assert_eq!(run("{{.ID}} {{.Replicas}}", &s), "abc 3");
        assert_eq!(
            run("{{json .Endpoint.VirtualIPs}}", &s),
            r#"[{"Addr":"10.0.0.2/24","NetworkID":"n1"}]"#
        );
        assert_eq!(run("{{json .Spec.Labels}}", &s), r#"{"a":"1","b":"2"}"#);
        let all: serde_json::Value = serde_json::from_str(&run("{{json .}}", &s)).unwrap();
        assert_eq!(all, s);
        assert_eq!(run("{{upper .Spec.Name}}\\t{{.ID}}", &s), "WEB\tabc");
        assert_eq!(run(r#"{{index .Spec.Labels "a"}}"#, &s), "1");
        assert_eq!(
            run("{{range .Endpoint.VirtualIPs}}{{.Addr}}{{end}}", &s),
            "10.0.0.2/24"
        );
    }

    #[test]
    fn table_json_and_bad_templates() {
        assert_eq!(parse("table"), Ok(Format::Table));
        assert_eq!(parse("json"), Ok(Format::Json));
        assert_eq!(
            parse("table {{.ID}}\\t{{.Name}}"),
            Ok(Format::Template {
                text: "{{.ID}}\t{{.Name}}".into(),
                table: true
            })
        );
        assert!(
            parse("{{.Name")
                .unwrap_err()
                .contains("template parsing error")
        );
        assert_eq!(
            header(
                "{{.ID}}\t{{.CurrentState}}\t{{.NodeID}}",
                &["ID", "CurrentState", "NodeID"]
            )
            .unwrap(),
            "ID\tCURRENT STATE\tNODE ID"
        );
    }
}
