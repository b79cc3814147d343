//! The rooms of `src/` depend downward only: no arrow up or across a floor, hence no circle
//! between rooms. The scanner and the floor table live in `tools/import_graph.rs` (also run by
//! `tools/import-graph.sh`, which prints the graph).

#[path = "../tools/import_graph.rs"]
mod import_graph;

use std::path::Path;

#[test]
fn every_arrow_between_rooms_points_down() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = import_graph::scan(&src).expect("reading src/");
    println!("{}", import_graph::render(&graph));
    // Guards the scanner itself: a graph without arrows would pass any rule.
    assert!(
        graph.arrows.len() > 50,
        "found only {} arrows",
        graph.arrows.len()
    );
    let problems = import_graph::check(&graph);
    assert!(
        problems.is_empty(),
        "{} arrow(s) break the floors (see docs/architecture.md):\n{}",
        problems.len(),
        problems.join("\n")
    );
}
