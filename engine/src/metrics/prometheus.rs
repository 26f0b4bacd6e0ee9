//! The stats line (`{"quench_stats": ...}`, see docs/operations.md "Stats") in the
//! Prometheus text exposition format (version 0.0.4), so a scraper reads the same counters.
//!
//! The mapping follows the JSON's structure, so a field added to the stats line is exported
//! with no change here, and no shape of JSON can produce invalid output (duplicate label
//! names, invalid or reserved ones, a family split in two or typed twice, a series twice):
//! - a string outside arrays is a label of `quench_info 1`, named by its path
//!   (`datapath`, `xdp_attached`);
//! - a number `a.b` is `quench_a_b`; `true`/`false` are gauges of 1/0; `null` is skipped;
//! - the elements of an array of objects (`workers`, `xdp.sockets`) are one series each,
//!   named by the singular (`quench_worker_f`, `quench_xdp_socket_f`) and labelled by
//!   their `worker`, `queue` and `bind` fields, or by their position (`worker="i"` for
//!   `workers`, `index="i"` otherwise);
//! - an array of numbers (`xdp.worker_hits`) is one series per element, labelled by
//!   position (`worker` for `worker_hits`, `index` otherwise);
//! - an array of strings (`xdp.served_addresses`) is a gauge of its length, plus
//!   `quench_xdp_served_address{address="…"} 1` per element (`value` for other lists).
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
];

/// Fields of an array element that name it rather than count anything.
const LABELS: &[&str] = &["worker", "queue", "bind"];

/// The Content-Type of what [`render`] returns.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders a stats object (the value of `quench_stats`).
pub fn render(stats: &Value) -> String {
    let mut out = Output::default();
    if let Value::Object(top) = stats {
        out.object(top, "quench", "", &[]);
    }
    let mut text = String::new();
    if !out.info.is_empty() {
        text.push_str("# TYPE quench_info gauge\n");
        let _ = writeln!(text, "quench_info{} 1", labels(&out.info));
    }
    for f in &out.families {
        let kind = if f.gauge { "gauge" } else { "counter" };
        let _ = writeln!(text, "# TYPE {} {kind}", f.name);
        for (l, v) in &f.samples {
            let _ = writeln!(text, "{}{} {v}", f.name, labels(l));
        }
    }
    text
}

type Labels = Vec<(String, String)>;

struct Family {
    name: String,
    gauge: bool,
    samples: Vec<(Labels, String)>,
}

/// Families in the order first seen, each with all its samples (the format wants every
/// sample of a family under its one TYPE line), and the info labels.
#[derive(Default)]
struct Output {
    families: Vec<Family>,
    info: Labels,
}

impl Output {
    fn sample(&mut self, name: &str, gauge: bool, labels: &[(String, String)], value: String) {
        // `quench_info` is the info family's (a counter's `_total` is a suffix to parsers).
        let base = if name == "quench_info" {
            "quench_info_value"
        } else {
            name
        };
        let name = if gauge {
            base.to_string()
        } else {
            format!("{base}_total")
        };
        let i = match self.families.iter().position(|f| f.name == name) {
            Some(i) => i,
            None => {
                self.families.push(Family {
                    name,
                    gauge,
                    samples: Vec::new(),
                });
                self.families.len() - 1
            }
        };
        let family = &mut self.families[i];
        // A name reached by two paths (`a_b.c` and `a.b_c`) keeps its first series.
        if !family.samples.iter().any(|(l, _)| l == labels) {
            family.samples.push((labels.to_vec(), value));
        }
    }

    /// `obj`'s fields under metric name `prefix`; `path` names info labels.
    fn object(
        &mut self,
        obj: &Map<String, Value>,
        prefix: &str,
        path: &str,
        labels: &[(String, String)],
    ) {
        for (key, value) in obj {
            let key = metric_name(key);
            let name = format!("{prefix}_{key}");
            let path = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}_{key}")
            };
            match value {
                Value::Number(n) => {
                    self.sample(&name, GAUGES.contains(&key.as_str()), labels, n.to_string())
                }
                Value::Bool(b) => self.sample(&name, true, labels, u8::from(*b).to_string()),
                // Keys that differ only in characters names cannot hold keep the first.
                Value::String(s)
                    if labels.is_empty()
                        && !self.info.iter().any(|(k, _)| *k == label_name(&path)) =>
                {
                    self.info.push((label_name(&path), s.clone()));
                }
                Value::Object(inner) => self.object(inner, &name, &path, labels),
                Value::Array(items) => self.array(&key, &name, &path, items, labels),
                _ => {}
            }
        }
    }

    fn array(
        &mut self,
        key: &str,
        name: &str,
        path: &str,
        items: &[Value],
        labels: &[(String, String)],
    ) {
        let element = singular(name);
        let position = if key == "workers" || key == "worker_hits" {
            "worker"
        } else {
            "index"
        };
        let with = |labels: &[(String, String)], k: &str, v: String| -> Labels {
            let mut l = labels.to_vec();
            if !l.iter().any(|(have, _)| have == k) {
                l.push((k.to_string(), v));
            }
            l
        };
        match items.first() {
            Some(Value::Object(_)) => {
                for (i, item) in items.iter().enumerate() {
                    let Value::Object(fields) = item else {
                        continue;
                    };
                    let mut l = labels.to_vec();
                    let mut rest = Map::new();
                    for (k, v) in fields {
                        match v {
                            Value::String(_) | Value::Number(_) if LABELS.contains(&k.as_str()) => {
                                l = with(&l, k, scalar(v));
                            }
                            _ => {
                                rest.insert(k.clone(), v.clone());
                            }
                        }
                    }
                    if !LABELS.iter().any(|k| fields.contains_key(*k)) {
                        l = with(&l, position, i.to_string());
                    }
                    self.object(&rest, element, path, &l);
                }
            }
            Some(Value::String(_)) => {
                let label = if key.ends_with("addresses") {
                    "address"
                } else {
                    "value"
                };
                // The count and the elements are two families.
                let each = format!("{name}_item");
                let element = if element == name { &each } else { element };
                for item in items {
                    if let Value::String(s) = item {
                        self.sample(element, true, &with(labels, label, s.clone()), "1".into());
                    }
                }
                self.sample(name, true, labels, items.len().to_string());
            }
            Some(_) => {
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::Number(n) => self.sample(
                            name,
                            GAUGES.contains(&key),
                            &with(labels, position, i.to_string()),
                            n.to_string(),
                        ),
                        Value::Bool(b) => self.sample(
                            name,
                            true,
                            &with(labels, position, i.to_string()),
                            u8::from(*b).to_string(),
                        ),
                        _ => {}
                    }
                }
            }
            None => {}
        }
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

/// A label name from a path: a letter or `_` first, and not the `__` prefix Prometheus
/// keeps for itself.
fn label_name(path: &str) -> String {
    if path.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') && !path.starts_with("__") {
        path.to_string()
    } else {
        format!("k{path}")
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
    use proptest::prelude::*;
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
            "quench_info{datapath=\"xdp\",xdp_attached=\"native\"} 1",
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
        validate(&text).unwrap();
    }

    #[test]
    fn label_values_are_escaped() {
        let text = render(&json!({"datapath": "a\"b\\c\nd"}));
        assert!(
            text.contains(r#"quench_info{datapath="a\"b\\c\nd"} 1"#),
            "{text}"
        );
    }

    /// The format's rules that lenient parsers (Prometheus's Python client among them) do
    /// not check: one TYPE line per family, before all of its samples, which follow each
    /// other; each series once; each label name once per series; valid names.
    fn validate(text: &str) -> Result<(), String> {
        let valid = |n: &str| {
            !n.is_empty()
                && !n.starts_with(|c: char| c.is_ascii_digit())
                && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        };
        let mut typed = std::collections::HashSet::new();
        let mut series = std::collections::HashSet::new();
        let mut current = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').ok_or(line)?;
                if !typed.insert(name.to_string()) {
                    return Err(format!("{name} typed twice"));
                }
                if !["counter", "gauge"].contains(&kind) || !valid(name) {
                    return Err(line.into());
                }
                current = name.to_string();
                continue;
            }
            let (id, value) = line.rsplit_once(' ').ok_or(line)?;
            value.parse::<f64>().map_err(|_| line.to_string())?;
            let name = id.split('{').next().unwrap_or_default();
            if name != current {
                return Err(format!("{line}: outside its family {current}"));
            }
            if let Some(l) = id.strip_prefix(name) {
                let inner = l.strip_prefix('{').and_then(|l| l.strip_suffix('}'));
                let mut names = std::collections::HashSet::new();
                for pair in inner
                    .unwrap_or_default()
                    .split("\",")
                    .filter(|p| !p.is_empty())
                {
                    let (k, _) = pair.split_once("=\"").ok_or(line)?;
                    if !valid(k) || !names.insert(k) {
                        return Err(format!("{line}: label {k}"));
                    }
                }
            }
            if !series.insert(id.to_string()) {
                return Err(format!("{id} twice"));
            }
        }
        Ok(())
    }

    #[test]
    fn any_shape_of_json_renders_valid_text() {
        let stats = json!({
            "datapath": "x",
            "workers": [
                {"n": 1, "hits": [1, 2], "names": ["a"], "on": true, "gone": null, "worker": 7},
                {"n": 2, "hits": [], "names": [], "on": false, "deep": {"m": 3, "bind": "b"}},
            ],
            "xdp": {
                "datapath": "y",
                "attached": "native",
                "worker_hits": [],
                "sockets": [{"queue": 1, "worker": 0, "bind": "copy", "x": 1, "inner": [{"worker": 3, "y": 2}]}],
                "served_addresses": [],
                "weird key-name": 5,
                "list": ["1", "2"],
                "mixed": [1, "a", {"b": 2}],
            },
            "a_b": {"c": 1},
            "a": {"b_c": 2},
            "info": 3,
            "": "empty",
            "1x": "digit",
            "__name__": "reserved",
        });
        let text = render(&stats);
        validate(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        for bad in [
            "# TYPE a counter\na 1\n# TYPE a counter\n",
            "# TYPE a gauge\na{x=\"1\",x=\"2\"} 1\n",
            "# TYPE a gauge\na 1\n# TYPE b gauge\na 2\n",
            "# TYPE a gauge\na 1\na 2\n",
        ] {
            assert!(validate(bad).is_err(), "the check itself: {bad}");
        }
        for line in [
            "quench_info{k=\"empty\",k1x=\"digit\",k__name__=\"reserved\",datapath=\"x\",xdp_attached=\"native\",xdp_datapath=\"y\"} 1",
            "quench_info_value_total 3",
            "quench_worker_n_total{worker=\"7\"} 1",
            "quench_worker_n_total{worker=\"1\"} 2",
            "quench_worker_hits_total{worker=\"7\",index=\"1\"} 2",
            "quench_worker_on{worker=\"1\"} 0",
            "quench_xdp_weird_key_name_total 5",
            "quench_xdp_list 2",
            "quench_xdp_list_item{value=\"2\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
    }

    fn json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<u64>().prop_map(serde_json::Value::from),
            "[a-z_ 0-9\"\\\\\n]{0,6}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(serde_json::Value::from),
                proptest::collection::btree_map("[a-z_1 ]{0,5}", inner, 0..6)
                    .prop_map(|m| { serde_json::Value::Object(m.into_iter().collect()) }),
            ]
        })
    }

    proptest! {
        /// Whatever the stats JSON looks like, the text is valid exposition format.
        #[test]
        fn any_json_renders_valid_text(v in json()) {
            for stats in [v.clone(), serde_json::json!({ "workers": [v.clone(), v] })] {
                let text = render(&stats);
                prop_assert!(validate(&text).is_ok(), "{:?}\n{}", validate(&text), text);
            }
        }
    }
}
