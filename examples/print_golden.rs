//! Print the ring's placement of the golden keys, in the form of the golden tables of
//! `route::ring`'s tests (`GOLDEN_EQUAL`, `GOLDEN_WEIGHTED`):
//!
//!     cargo run --example print_golden
//!
//! Those tables pin where users live. Regenerate them only for a deliberate, announced
//! placement change, never to make a test pass; a key given on the command line is printed
//! instead of the golden ones.

use xmpp_lb::route::ring::Ring;

/// The keys of the golden tables, in their order.
const GOLDEN_KEYS: [&str; 20] = [
    "juliet@example.test",
    "romeo@example.test",
    "nurse@example.test",
    "benvolio@example.test",
    "mercutio@example.test",
    "tybalt@example.test",
    "capulet@example.test",
    "montague@example.test",
    "paris@example.test",
    "laurence@example.test",
    "balthasar@example.test",
    "sampson@example.test",
    "gregory@example.test",
    "änne@example.test",
    "ωμέγα@example.test",
    "日本語@example.test",
    "192.0.2.0/24",
    "198.51.100.0/24",
    "2001:db8:1:2::/64",
    "",
];

fn main() {
    let given: Vec<String> = std::env::args().skip(1).collect();
    let keys: Vec<&str> = if given.is_empty() {
        GOLDEN_KEYS.to_vec()
    } else {
        given.iter().map(String::as_str).collect()
    };
    // The two backend sets of the tables: equal weights, then weights 1, 2, 3.
    for spec in [
        &[("node1", 1), ("node2", 1), ("node3", 1)][..],
        &[("a", 1), ("b", 2), ("c", 3)][..],
    ] {
        let set: Vec<(String, u32)> = spec.iter().map(|(n, w)| (n.to_string(), *w)).collect();
        let ring = Ring::new(&set);
        for key in &keys {
            let names: Vec<&str> = ring
                .preference(key)
                .into_iter()
                .map(|i| set[i].0.as_str())
                .collect();
            println!("        ({key:?}, {names:?}),");
        }
        println!();
    }
}
