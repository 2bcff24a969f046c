//! Every counter in the closed enums is incremented somewhere (STYLE.md §8): a counter that
//! nothing moves is a dashboard that lies.

use runnel_core::counters::Counter;
use runnel_node::command::CommandCounter;
use runnel_node::shard::RuntimeCounter;
use std::path::Path;

fn sources(dir: &Path, out: &mut String) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push_str(&std::fs::read_to_string(&path).unwrap());
            out.push('\n');
        }
    }
}

/// Variant names as written in code, from the enum's Debug output.
fn incremented(code: &str, enum_name: &str, variant: &str) -> bool {
    let needle = format!("{enum_name}::{variant}");
    code.lines().any(|line| line.contains(&needle) && (line.contains("increment(") || line.contains(".add(")))
        || code.match_indices(&needle).any(|(at, _)| {
            // Multi-line calls: `counters.add(\n    Counter::X,`.
            let before = &code[at.saturating_sub(80)..at];
            before.contains("increment(") || before.contains(".add(")
        })
}

// Goal: each relay counter, each shard runtime counter and each command counter is
// incremented by some code path in the dataplane sources (not only declared).
#[test]
fn every_counter_is_incremented_somewhere() {
    let mut code = String::new();
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    sources(&manifest.join("src"), &mut code);
    sources(&manifest.join("../core/src"), &mut code);
    let unused: Vec<String> = Counter::ALL
        .iter()
        .map(|c| format!("{c:?}"))
        .filter(|v| !incremented(&code, "Counter", v))
        .chain(RuntimeCounter::ALL.iter().map(|c| format!("{c:?}")).filter(|v| !incremented(&code, "RuntimeCounter", v)))
        .chain(CommandCounter::ALL.iter().map(|c| format!("{c:?}")).filter(|v| !incremented(&code, "CommandCounter", v)))
        .collect();
    assert!(unused.is_empty(), "counters never incremented: {unused:?}");
}
