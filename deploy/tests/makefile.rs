//! `make help` lists every target the Makefile defines, with its own words and no variable left
//! unexpanded: README sends a newcomer to it, so a target missing there is a target nobody finds.

use std::collections::BTreeSet;
use std::process::Command;

use poc_routing_deploy::repo_root;
use regex::Regex;

#[test]
fn make_help_lists_every_target_with_a_description() {
    let makefile = std::fs::read_to_string(repo_root().join("Makefile")).expect("the Makefile");
    let rule = Regex::new(r"(?m)^([a-z0-9][a-z0-9-]*):(?:[^=]|$)").unwrap();
    let targets: BTreeSet<&str> = rule
        .captures_iter(&makefile)
        .map(|c| c.get(1).unwrap().as_str())
        .collect();
    assert!(targets.len() > 20, "targets found: {targets:?}");
    let output = Command::new("make")
        .args(["--no-print-directory", "help"])
        .current_dir(repo_root())
        .output()
        .expect("make runs (apt-get install make)");
    assert!(output.status.success(), "make help failed: {output:?}");
    let help = String::from_utf8(output.stdout).unwrap();
    let listed: BTreeSet<&str> = help
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("make "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        targets, listed,
        "EXPECTED make help to list every target of the Makefile (a `## ` comment after each rule), RECEIVED:\n{help}"
    );
    for line in help.lines() {
        let words = line.split_whitespace().nth(2);
        assert!(words.is_some(), "a target without words: {line:?}");
        assert!(!line.contains("$("), "an unexpanded variable: {line:?}");
    }
}
