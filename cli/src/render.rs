//! Output shaped like docker/cli's: tabwriter tables, `--format json` lines, inspect arrays,
//! human durations, truncated IDs and the service PORTS column.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::time::Duration;

use bollard::models::{EndpointPortConfig, EndpointPortConfigPublishModeEnum};
use serde::Serialize;

/// A table written the way docker/cli's `tabwriter.NewWriter(out, 10, 1, 3, ' ', 0)` writes it.
///
/// Go's tabwriter counts the padding inside the minimum width (a cell takes
/// `max(text + 3, 10)` columns) while the Rust crate adds the padding after it
/// (`max(text, minwidth) + 3`), so the Go minimum of 10 becomes 7 here.
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Table {
            rows: vec![header.iter().map(|h| h.to_string()).collect()],
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let mut tw = tabwriter::TabWriter::new(Vec::new()).minwidth(7).padding(3);
        for row in &self.rows {
            // Cells never contain tabs or newlines from the API in practice; replacing them
            // keeps one bad value from shifting every column.
            let cells: Vec<String> = row.iter().map(|c| c.replace(['\t', '\n'], " ")).collect();
            // Writing to a Vec cannot fail.
            let _ = writeln!(tw, "{}", cells.join("\t"));
        }
        let bytes = tw.into_inner().unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    pub fn print(&self) -> io::Result<()> {
        io::stdout().write_all(self.render().as_bytes())
    }
}

/// One JSON object per line, keys sorted, like docker's `--format json` (`{{json .}}`).
pub fn json_line(fields: &[(&str, serde_json::Value)]) -> String {
    let map: BTreeMap<&str, &serde_json::Value> = fields.iter().map(|(k, v)| (*k, v)).collect();
    serde_json::to_string(&map).unwrap_or_default()
}

/// Pretty JSON with 4-space indentation, the way `docker inspect` prints: fields in the
/// order of the API types, and string-keyed maps (labels, options) sorted by key.
pub fn inspect_json<T: Serialize>(items: &[T]) -> anyhow::Result<String> {
    let raw = serde_json::to_string(items)?;
    let mut ordered: ordered::Value = serde_json::from_str(&raw)?;
    ordered.sort_maps(None);
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
    ordered.serialize(&mut ser)?;
    out.push(b'\n');
    Ok(String::from_utf8(out)?)
}

mod ordered {
    //! A JSON value that keeps object keys in document order, so struct fields keep the
    //! order of the API types while map-valued fields can be sorted explicitly.

    use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
    use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
    use std::fmt;

    /// Fields of the Engine API types that are `map[string]...` in Go, whose keys Go's
    /// encoder sorts.
    const MAP_FIELDS: &[&str] = &[
        "Labels",
        "Options",
        "DriverOpts",
        "Containers",
        "Services",
        "Sysctls",
        "Plugins",
    ];

    /// Where bollard's (swagger-ordered) types disagree with the field order of docker's Go
    /// types, which is what `docker inspect` prints.
    const GO_ORDER: &[(&str, &[&str])] = &[
        (
            "ContainerSpec",
            &[
                "Image",
                "Labels",
                "Command",
                "Args",
                "Hostname",
                "Env",
                "Dir",
                "User",
                "Groups",
                "Privileges",
                "Init",
                "StopSignal",
                "TTY",
                "OpenStdin",
                "ReadOnly",
                "Mounts",
                "StopGracePeriod",
                "Healthcheck",
                "Hosts",
                "DNSConfig",
                "Secrets",
                "Configs",
                "Isolation",
                "Sysctls",
                "CapabilityAdd",
                "CapabilityDrop",
                "Ulimits",
                "OomScoreAdj",
            ],
        ),
        (
            "TaskTemplate",
            &[
                "ContainerSpec",
                "PluginSpec",
                "NetworkAttachmentSpec",
                "Resources",
                "RestartPolicy",
                "Placement",
                "Networks",
                "LogDriver",
                "ForceUpdate",
                "Runtime",
            ],
        ),
    ];

    pub enum Value {
        Scalar(serde_json::Value),
        Array(Vec<Value>),
        Object(Vec<(String, Value)>),
    }

    impl Value {
        pub fn sort_maps(&mut self, parent_key: Option<&str>) {
            match self {
                Value::Scalar(_) => {}
                Value::Array(items) => items.iter_mut().for_each(|v| v.sort_maps(None)),
                Value::Object(fields) => {
                    if parent_key.is_some_and(|k| MAP_FIELDS.contains(&k)) {
                        fields.sort_by(|a, b| a.0.cmp(&b.0));
                    } else if let Some((_, order)) =
                        GO_ORDER.iter().find(|(p, _)| Some(*p) == parent_key)
                    {
                        let rank =
                            |k: &str| order.iter().position(|o| *o == k).unwrap_or(usize::MAX);
                        fields.sort_by_key(|(k, _)| rank(k));
                    }
                    for (k, v) in fields.iter_mut() {
                        v.sort_maps(Some(k));
                    }
                }
            }
        }
    }

    impl Serialize for Value {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            match self {
                Value::Scalar(v) => v.serialize(s),
                Value::Array(items) => {
                    let mut seq = s.serialize_seq(Some(items.len()))?;
                    for item in items {
                        seq.serialize_element(item)?;
                    }
                    seq.end()
                }
                Value::Object(fields) => {
                    let mut map = s.serialize_map(Some(fields.len()))?;
                    for (k, v) in fields {
                        map.serialize_entry(k, v)?;
                    }
                    map.end()
                }
            }
        }
    }

    struct ValueVisitor;

    impl<'de> Visitor<'de> for ValueVisitor {
        type Value = Value;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
            Ok(Value::Scalar(v.into()))
        }
        fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
            Ok(Value::Scalar(v.into()))
        }
        fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
            Ok(Value::Scalar(v.into()))
        }
        fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
            Ok(Value::Scalar(v.into()))
        }
        fn visit_str<E>(self, v: &str) -> Result<Value, E> {
            Ok(Value::Scalar(v.into()))
        }
        fn visit_string<E>(self, v: String) -> Result<Value, E> {
            Ok(Value::Scalar(v.into()))
        }
        fn visit_unit<E>(self) -> Result<Value, E> {
            Ok(Value::Scalar(serde_json::Value::Null))
        }
        fn visit_none<E>(self) -> Result<Value, E> {
            Ok(Value::Scalar(serde_json::Value::Null))
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
            Value::deserialize(d)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
            let mut items = Vec::new();
            while let Some(item) = seq.next_element()? {
                items.push(item);
            }
            Ok(Value::Array(items))
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
            let mut fields = Vec::new();
            while let Some((k, v)) = map.next_entry::<String, Value>()? {
                fields.push((k, v));
            }
            Ok(Value::Object(fields))
        }
    }

    impl<'de> Deserialize<'de> for Value {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
            d.deserialize_any(ValueVisitor)
        }
    }
}

/// docker's `stringid.TruncateID`: the first 12 characters, without an algorithm prefix.
pub fn truncate_id(id: &str) -> String {
    let id = id.split_once(':').map_or(id, |(_, rest)| rest);
    id.chars().take(12).collect()
}

/// docker's `formatter.PrettyPrint`: first letter upper case, the rest lower case.
pub fn pretty(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        None => String::new(),
        Some(first) if s.len() == 1 => first.to_lowercase().collect(),
        Some(first) => first
            .to_uppercase()
            .chain(chars.flat_map(char::to_lowercase))
            .collect(),
    }
}

/// docker's `formatter.Ellipsis` for ASCII-width text.
pub fn ellipsis(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// go-units `HumanDuration`, as docker prints ages ("About a minute", "3 hours").
pub fn human_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs < 1 {
        return "Less than a second".into();
    }
    if secs == 1 {
        return "1 second".into();
    }
    if secs < 60 {
        return format!("{secs} seconds");
    }
    let minutes = secs / 60;
    if minutes == 1 {
        return "About a minute".into();
    }
    if minutes < 60 {
        return format!("{minutes} minutes");
    }
    // go-units rounds hours to the nearest (int(d.Hours() + 0.5)) but floors everything else.
    let hours = (d.as_secs_f64() / 3600.0 + 0.5) as u64;
    if hours == 1 {
        return "About an hour".into();
    }
    if hours < 48 {
        return format!("{hours} hours");
    }
    if hours < 24 * 7 * 2 {
        return format!("{} days", hours / 24);
    }
    if hours < 24 * 30 * 2 {
        return format!("{} weeks", hours / 24 / 7);
    }
    if hours < 24 * 365 * 2 {
        return format!("{} months", hours / 24 / 30);
    }
    format!("{} years", secs / 3600 / 24 / 365)
}

/// Time since `t`, clamped at zero when clocks disagree.
pub fn since(t: chrono::DateTime<chrono::Utc>) -> Duration {
    (chrono::Utc::now() - t).to_std().unwrap_or_default()
}

/// fvbommel/sortorder's `NaturalLess`: digit runs compare by value, so `web.2 < web.10`.
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let da = a.iter().take_while(|c| c.is_ascii_digit()).count();
                let db = b.iter().take_while(|c| c.is_ascii_digit()).count();
                let (na, nb) = (&a[..da], &b[..db]);
                let za = na.iter().take_while(|c| **c == b'0').count();
                let zb = nb.iter().take_while(|c| **c == b'0').count();
                let (ta, tb) = (&na[za..], &nb[zb..]);
                let ord = ta.len().cmp(&tb.len()).then_with(|| ta.cmp(tb));
                // Equal values: fewer leading zeros sorts first.
                let ord = ord.then_with(|| za.cmp(&zb));
                if ord != Ordering::Equal {
                    return ord;
                }
                a = &a[da..];
                b = &b[db..];
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(y);
                }
                a = &a[1..];
                b = &b[1..];
            }
        }
    }
}

/// Image as `service ls`/`service ps` show it: a pinned `@digest` dropped when a tag says
/// which image it is; a reference by digest alone keeps it (docker/cli's serviceContext.Image).
pub fn display_image(image: &str) -> String {
    match image.split_once('@') {
        Some((name, _))
            if name
                .rsplit('/')
                .next()
                .is_some_and(|last| last.contains(':')) =>
        {
            name.to_string()
        }
        _ => image.to_string(),
    }
}

/// The PORTS column of `service ls`: ingress ports only, consecutive ports folded into
/// ranges exactly as docker/cli's serviceContext.Ports does.
pub fn service_ports(ports: &[EndpointPortConfig]) -> String {
    #[derive(Default)]
    struct Range {
        p_start: u32,
        p_end: u32,
        t_start: u32,
        t_end: u32,
        protocol: String,
    }
    impl Range {
        fn text(&self) -> String {
            let side = |s: u32, e: u32| {
                if e > s {
                    format!("{s}-{e}")
                } else {
                    s.to_string()
                }
            };
            format!(
                "*:{}->{}/{}",
                side(self.p_start, self.p_end),
                side(self.t_start, self.t_end),
                self.protocol
            )
        }
    }
    let port = |v: Option<i64>| u32::try_from(v.unwrap_or(0)).unwrap_or(0);
    let proto = |p: &EndpointPortConfig| p.protocol.map(|p| p.to_string()).unwrap_or_default();

    let mut sorted: Vec<&EndpointPortConfig> = ports.iter().collect();
    sorted.sort_by(|a, b| {
        proto(a)
            .cmp(&proto(b))
            .then_with(|| port(a.published_port).cmp(&port(b.published_port)))
    });
    let mut out = Vec::new();
    let mut pr = Range::default();
    for p in sorted {
        if p.publish_mode == Some(EndpointPortConfigPublishModeEnum::HOST) {
            continue;
        }
        let (published, target, protocol) = (port(p.published_port), port(p.target_port), proto(p));
        let is_range = pr.t_end != pr.t_start;
        let overlaps = target <= pr.t_end;
        // Go compares unsigned differences, which wrap; wrapping_sub keeps that behaviour.
        if protocol != pr.protocol
            || published.wrapping_sub(pr.p_end) > 1
            || target.wrapping_sub(pr.t_end) > 1
            || (is_range && overlaps)
        {
            if pr.p_start > 0 {
                out.push(pr.text());
            }
            pr = Range {
                p_start: published,
                p_end: published,
                t_start: target,
                t_end: target,
                protocol,
            };
            continue;
        }
        pr.p_end = published;
        pr.t_end = target;
    }
    if pr.p_start > 0 {
        out.push(pr.text());
    }
    out.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::EndpointPortConfigProtocolEnum as Proto;

    fn port(published: i64, target: i64) -> EndpointPortConfig {
        EndpointPortConfig {
            protocol: Some(Proto::TCP),
            target_port: Some(target),
            published_port: Some(published),
            publish_mode: Some(EndpointPortConfigPublishModeEnum::INGRESS),
            ..Default::default()
        }
    }

    #[test]
    fn service_ls_table_matches_docker_spacing() {
        let mut t = Table::new(&["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"]);
        t.row(vec![
            "a1b2c3d4e5f6".into(),
            "search".into(),
            "replicated".into(),
            "3/3".into(),
            "elasticsearch:7".into(),
            "*:9200->9200/tcp".into(),
        ]);
        t.row(vec![
            "0123456789ab".into(),
            "psql".into(),
            "replicated".into(),
            "1/1".into(),
            "postgres:latest".into(),
            String::new(),
        ]);
        let out = t.render();
        let lines: Vec<&str> = out.lines().collect();
        // Column widths: ID 12+3, NAME min 10, MODE 10+3, REPLICAS 8+3, IMAGE 15+3.
        assert_eq!(
            lines[0],
            "ID             NAME      MODE         REPLICAS   IMAGE             PORTS"
        );
        assert_eq!(
            lines[1],
            "a1b2c3d4e5f6   search    replicated   3/3        elasticsearch:7   *:9200->9200/tcp"
        );
        // Docker leaves the padding of the last tab-terminated cell in place.
        assert_eq!(
            lines[2],
            "0123456789ab   psql      replicated   1/1        postgres:latest   "
        );
    }

    #[test]
    fn long_cell_widens_column_by_padding() {
        let mut t = Table::new(&["A", "B"]);
        t.row(vec!["exactly-ten".into(), "x".into()]);
        // Go: max(11 + 3, 10) = 14 columns.
        assert_eq!(t.render(), "A             B\nexactly-ten   x\n");
    }

    #[test]
    fn human_durations_follow_go_units() {
        let s = Duration::from_secs;
        assert_eq!(
            human_duration(Duration::from_millis(400)),
            "Less than a second"
        );
        assert_eq!(human_duration(s(1)), "1 second");
        assert_eq!(human_duration(s(27)), "27 seconds");
        assert_eq!(human_duration(s(59)), "59 seconds");
        assert_eq!(human_duration(s(60)), "About a minute");
        assert_eq!(human_duration(s(119)), "About a minute");
        assert_eq!(human_duration(s(120)), "2 minutes");
        assert_eq!(human_duration(s(59 * 60 + 59)), "59 minutes");
        assert_eq!(human_duration(s(3600)), "About an hour");
        assert_eq!(human_duration(s(90 * 60 - 1)), "About an hour");
        assert_eq!(human_duration(s(90 * 60)), "2 hours");
        assert_eq!(human_duration(s(47 * 3600)), "47 hours");
        assert_eq!(human_duration(s(48 * 3600)), "2 days");
        assert_eq!(human_duration(s(14 * 24 * 3600)), "2 weeks");
        assert_eq!(human_duration(s(60 * 24 * 3600)), "2 months");
        assert_eq!(human_duration(s(2 * 365 * 24 * 3600)), "2 years");
    }

    #[test]
    fn ports_column() {
        assert_eq!(service_ports(&[port(80, 80)]), "*:80->80/tcp");
        assert_eq!(
            service_ports(&[port(9200, 9200), port(8080, 80)]),
            "*:8080->80/tcp, *:9200->9200/tcp"
        );
        assert_eq!(
            service_ports(&[port(80, 80), port(81, 81), port(82, 80)]),
            "*:80-81->80-81/tcp, *:82->80/tcp"
        );
        assert_eq!(
            service_ports(&[port(80, 80), port(81, 80)]),
            "*:80-81->80/tcp"
        );
        let mut udp = port(53, 53);
        udp.protocol = Some(Proto::UDP);
        assert_eq!(
            service_ports(&[udp, port(53, 53)]),
            "*:53->53/tcp, *:53->53/udp"
        );
        let mut host = port(8000, 80);
        host.publish_mode = Some(EndpointPortConfigPublishModeEnum::HOST);
        assert_eq!(service_ports(&[host]), "");
    }

    #[test]
    fn ids_states_and_names() {
        assert_eq!(truncate_id("sha256:0123456789abcdef"), "0123456789ab");
        assert_eq!(truncate_id("abc"), "abc");
        assert_eq!(pretty("running"), "Running");
        assert_eq!(pretty("READY"), "Ready");
        assert_eq!(ellipsis("abcdef", 4), "abc…");
        assert_eq!(display_image("img:1@sha256:abc"), "img:1");
        assert_eq!(
            display_image("192.168.0.1:5000/app:v2@sha256:abc"),
            "192.168.0.1:5000/app:v2"
        );
        assert_eq!(display_image("img@sha256:abc"), "img@sha256:abc");
        assert_eq!(
            display_image("192.168.0.1:5000/app@sha256:abc"),
            "192.168.0.1:5000/app@sha256:abc"
        );
        let mut names = vec!["web.10", "web.2", "api.1", "web.1"];
        names.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(names, ["api.1", "web.1", "web.2", "web.10"]);
    }

    #[test]
    fn inspect_keeps_field_order_and_sorts_maps() {
        use bollard::models::{Network, ServiceEndpointVirtualIps};
        let vip = ServiceEndpointVirtualIps {
            network_id: Some("n1".into()),
            addr: Some("10.0.0.2/24".into()),
        };
        let out = inspect_json(&[vip]).unwrap_or_default();
        assert_eq!(
            out,
            "[\n    {\n        \"NetworkID\": \"n1\",\n        \"Addr\": \"10.0.0.2/24\"\n    }\n]\n"
        );
        let net = Network {
            name: Some("x".into()),
            options: Some(
                [("b", "2"), ("a", "1")]
                    .map(|(k, v)| (k.into(), v.into()))
                    .into(),
            ),
            ..Default::default()
        };
        let out = inspect_json(&[net]).unwrap_or_default();
        let a = out.find("\"a\"").unwrap_or(usize::MAX);
        let b = out.find("\"b\"").unwrap_or(0);
        assert!(a < b, "{out}");
    }

    #[test]
    fn json_lines_sort_keys() {
        let line = json_line(&[("Name", "web".into()), ("ID", "abc".into())]);
        assert_eq!(line, r#"{"ID":"abc","Name":"web"}"#);
    }
}
