//! `keywardctl completions bash|zsh|fish`.

use crate::helpers::{keywardctl, run};

#[test]
fn completion_scripts_name_every_verb_and_bash_accepts_its_own() {
    for shell in ["bash", "zsh", "fish"] {
        let script = run(keywardctl().args(["completions", shell]), None);
        let script = script.ok();
        for verb in [
            "mint",
            "revoke",
            "rotate",
            "verify",
            "ca-cert",
            "client-cert",
        ] {
            assert!(script.contains(verb), "{shell} script lacks {verb}");
        }
    }
    // The bash script is valid bash.
    let script = run(keywardctl().args(["completions", "bash"]), None);
    let checked = std::process::Command::new("bash")
        .args(["-n", "-c", script.ok()])
        .status()
        .expect("bash runs");
    assert!(checked.success());
    run(keywardctl().args(["completions", "tcsh"]), None).fails(2, &["tcsh"]);
}
