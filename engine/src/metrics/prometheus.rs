//! The stats line (`{"quench_stats": ...}`, see docs/operations.md "Stats") in the
//! Prometheus text exposition format (version 0.0.4), so a scraper reads the same counters.
//!
//! The mapping is structural, so a counter added to the stats line is exported with no
//! change here:
//! - a string at the top level or in `xdp` (`datapath`, `attached`) is a label of
//!   `quench_info 1`;
//! - `workers[i].f` is `quench_worker_f{worker="i"}`;
//! - `xdp.program.f` is `quench_xdp_program_f`;
//! - `xdp.worker_hits[w]` is `quench_xdp_worker_hits{worker="w"}`;
//! - `xdp.sockets[i]`: `worker`, `queue` and `bind` are labels, every other field `f` is
//!   `quench_xdp_socket_f{...}`;
//! - `xdp.served_addresses` is a gauge of how many there are, plus
//!   `quench_xdp_served_address{address="..."} 1` for each;
//! - any other number `a.b` is `quench_a_b`.
//!
//! Counters get the `_total` suffix; the few values that go down are gauges ([`GAUGES`]).
use std::fmt::Write;

use serde_json::{Map, Value};

/// Fields that are levels, not running totals.
const GAUGES: &[&str] = &[
    "connections",
    "unvalidated_handshakes",
    "max_datagram_size_peak",
    "frames_free",
    "frames_fill",
    "frames_rx",
    "frames_tx",
    "served_addresses",
];

/// Fields of an array element that name it rather than count anything.
const LABELS: &[&str] = &["worker", "queue", "bind"];

/// The Content-Type of what [`render`] returns.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders a stats object (the value of `quench_stats`).
pub fn render(stats: &Value) -> String {
    let mut families = Families::default();
    let mut info = Vec::new();
    if let Value::Object(top) = stats {
        walk(top, "quench", &[], &mut families, &mut info);
    }
    let mut out = String::new();
    if !info.is_empty() {
        out.push_str("# TYPE quench_info gauge\n");
        let _ = writeln!(out, "quench_info{} 1", labels(&info));
    }
    for f in &families.list {
        let kind = if f.gauge { "gauge" } else { "counter" };
        let _ = writeln!(out, "# TYPE {} {kind}", f.name);
        for (l, v) in &f.samples {
            let _ = writeln!(out, "{}{} {v}", f.name, labels(l));
        }
    }
    out
}

type Labels = Vec<(String, String)>;

struct Family {
    name: String,
    gauge: bool,
    samples: Vec<(Labels, String)>,
}

/// Families in the order first seen; every sample of one family goes under its one TYPE
/// line, as the format requires.
#[derive(Default)]
struct Families {
    list: Vec<Family>,
}

impl Families {
    fn add(&mut self, base: &str, field: &str, labels: &[(String, String)], value: String) {
        let gauge = GAUGES.contains(&field);
        let name = if gauge {
            base.to_string()
        } else {
            format!("{base}_total")
        };
        let i = match self.list.iter().position(|f| f.name == name) {
            Some(i) => i,
            None => {
                self.list.push(Family {
                    name,
                    gauge,
                    samples: Vec::new(),
                });
                self.list.len() - 1
            }
        };
        self.list[i].samples.push((labels.to_vec(), value));
    }
}

fn walk(
    obj: &Map<String, Value>,
    prefix: &str,
    labels: &[(String, String)],
    families: &mut Families,
    info: &mut Labels,
) {
    for (key, value) in obj {
        let name = format!("{prefix}_{}", metric_name(key));
        match value {
            Value::Number(n) => families.add(&name, key, labels, n.to_string()),
            Value::String(s) if labels.is_empty() => info.push((metric_name(key), s.clone())),
            Value::Object(inner) => walk(inner, &name, labels, families, info),
            Value::Array(items) => walk_array(key, &name, items, labels, families, info),
            _ => {}
        }
    }
}

fn walk_array(
    key: &str,
    name: &str,
    items: &[Value],
    labels: &[(String, String)],
    families: &mut Families,
    info: &mut Labels,
) {
    // `workers` → `worker`, `sockets` → `socket`: one element per sample.
    let element = singular(name);
    for (i, item) in items.iter().enumerate() {
        match item {
            Value::Object(fields) => {
                let mut l = labels.to_vec();
                if !fields.contains_key("worker") && key == "workers" {
                    l.push(("worker".into(), i.to_string()));
                }
                let mut rest = Map::new();
                for (k, v) in fields {
                    if LABELS.contains(&k.as_str()) {
                        l.push((metric_name(k), scalar(v)));
                    } else {
                        rest.insert(k.clone(), v.clone());
                    }
                }
                walk(&rest, element, &l, families, info);
            }
            Value::Number(n) => {
                // An array of counts is indexed by worker (`worker_hits`).
                let mut l = labels.to_vec();
                l.push(("worker".into(), i.to_string()));
                families.add(name, key, &l, n.to_string());
            }
            Value::String(s) => {
                let mut l = labels.to_vec();
                l.push(("address".into(), s.clone()));
                families.add_gauge(element, &l);
            }
            _ => {}
        }
    }
    if items.iter().all(Value::is_string) {
        families.add(name, key, labels, items.len().to_string());
    }
}

impl Families {
    /// A `1` sample of an info-style gauge (one per listed value).
    fn add_gauge(&mut self, name: &str, labels: &[(String, String)]) {
        let i = match self.list.iter().position(|f| f.name == name) {
            Some(i) => i,
            None => {
                self.list.push(Family {
                    name: name.to_string(),
                    gauge: true,
                    samples: Vec::new(),
                });
                self.list.len() - 1
            }
        };
        self.list[i].samples.push((labels.to_vec(), "1".into()));
    }
}

/// `quench_workers` → `quench_worker`, `…_addresses` → `…_address`.
fn singular(name: &str) -> &str {
    if let Some(stem) = name.strip_suffix("sses") {
        &name[..stem.len() + 2]
    } else {
        name.strip_suffix('s').unwrap_or(name)
    }
}

/// A JSON key as a metric name part: `[a-zA-Z0-9_]`, anything else becomes `_`.
fn metric_name(key: &str) -> String {
    key.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `{a="x",b="y"}`, values escaped as the format says (backslash, quote, newline).
fn labels(l: &[(String, String)]) -> String {
    if l.is_empty() {
        return String::new();
    }
    let mut out = String::from("{");
    for (i, (k, v)) in l.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn udp_stats_become_one_family_per_counter() {
        let stats = json!({
            "datapath": "udp",
            "workers": [
                {"datagrams_rx": 10, "connections": 2, "connections_accepted": 5},
                {"datagrams_rx": 7, "connections": 0, "connections_accepted": 1},
            ],
        });
        let text = render(&stats);
        let want = "\
# TYPE quench_info gauge
quench_info{datapath=\"udp\"} 1
# TYPE quench_worker_connections gauge
quench_worker_connections{worker=\"0\"} 2
quench_worker_connections{worker=\"1\"} 0
# TYPE quench_worker_connections_accepted_total counter
quench_worker_connections_accepted_total{worker=\"0\"} 5
quench_worker_connections_accepted_total{worker=\"1\"} 1
# TYPE quench_worker_datagrams_rx_total counter
quench_worker_datagrams_rx_total{worker=\"0\"} 10
quench_worker_datagrams_rx_total{worker=\"1\"} 7
";
        assert_eq!(text, want);
    }

    #[test]
    fn xdp_stats_keep_their_labels() {
        let stats = json!({
            "datapath": "xdp",
            "workers": [{"datagrams_rx": 1}],
            "xdp": {
                "attached": "native",
                "program": {"redirect": 42, "pass_not_local": 3},
                "worker_hits": [40, 2],
                "served_addresses": ["192.0.2.1", "2001:db8::1"],
                "served_address_changes": 1,
                "sockets": [
                    {"worker": 0, "queue": 3, "bind": "zero_copy", "rx_packets": 9, "frames_free": 100},
                ],
            },
        });
        let text = render(&stats);
        for line in [
            "quench_info{datapath=\"xdp\",attached=\"native\"} 1",
            "# TYPE quench_xdp_program_redirect_total counter",
            "quench_xdp_program_redirect_total 42",
            "quench_xdp_program_pass_not_local_total 3",
            "quench_xdp_worker_hits_total{worker=\"1\"} 2",
            "# TYPE quench_xdp_served_addresses gauge",
            "quench_xdp_served_addresses 2",
            "quench_xdp_served_address{address=\"2001:db8::1\"} 1",
            "quench_xdp_served_address_changes_total 1",
            "quench_xdp_socket_rx_packets_total{bind=\"zero_copy\",queue=\"3\",worker=\"0\"} 9",
            "# TYPE quench_xdp_socket_frames_free gauge",
            "quench_xdp_socket_frames_free{bind=\"zero_copy\",queue=\"3\",worker=\"0\"} 100",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
        // One TYPE line per family, all of its samples right after it.
        let mut seen = std::collections::HashSet::new();
        let mut current = String::new();
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                current = rest.split(' ').next().unwrap().to_string();
                assert!(seen.insert(current.clone()), "{current} typed twice");
            } else {
                let name = l.split(['{', ' ']).next().unwrap();
                assert_eq!(name, current, "{l} outside its family");
            }
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let text = render(&json!({"datapath": "a\"b\\c\nd"}));
        assert!(
            text.contains(r#"quench_info{datapath="a\"b\\c\nd"} 1"#),
            "{text}"
        );
    }
}
