//! End-to-end tests of `keywardctl audit`: the real binary against the real
//! server, in-process with a fresh SQLite database per test.

use serde_json::Value;

use crate::helpers::{TestServer, table_rows};

/// The `action`s of a JSON array of audit records, newest first.
fn actions(json: &Value) -> Vec<&str> {
    json.as_array()
        .unwrap_or_else(|| panic!("not an array: {json}"))
        .iter()
        .map(|record| record["action"].as_str().expect("action"))
        .collect()
}

#[test]
fn audit_shows_mint_and_revoke_of_a_key() {
    let server = TestServer::start();
    let (id, key) = server.mint(&["--role", "validator"]);
    server.forbid_printing(&key);
    let (other, _) = server.mint(&["--role", "validator"]);
    server
        .run(&["revoke", &id, "--reason", "leaked in a log"])
        .ok();
    let admin_id = server.run(&["show", &id, "--output", "json"]).json()["created_by"]
        .as_str()
        .expect("created_by")
        .to_owned();

    // --key, as a table: newest first, the admin key as the actor.
    let table = server.run(&["audit", "--key", &id]);
    let stdout = table.ok();
    let rows = table_rows(stdout);
    assert_eq!(rows[0], ["AT", "ACTOR", "ACTION", "TARGET", "REASON"]);
    assert_eq!(rows.len(), 3, "{stdout}");
    assert_eq!(
        rows[1][1..5],
        [admin_id.as_str(), "key.revoke", &id, "leaked"]
    );
    assert!(stdout.lines().nth(1).unwrap().ends_with("leaked in a log"));
    assert_eq!(rows[2][1..], [admin_id.as_str(), "key.mint", &id, "-"]);
    assert!(humantime::parse_rfc3339(rows[1][0]).is_ok(), "{stdout}");
    assert!(!stdout.contains(&other), "another key's records: {stdout}");

    // The same as JSON.
    let json = server
        .run(&["audit", "--key", &id, "--output", "json"])
        .json();
    assert_eq!(actions(&json), ["key.revoke", "key.mint"]);
    let revoke = &json[0];
    assert_eq!(revoke["actor"], admin_id.as_str());
    assert_eq!(revoke["target"], id.as_str());
    assert_eq!(revoke["reason"], "leaked in a log");
    assert!(humantime::parse_rfc3339(revoke["at"].as_str().unwrap()).is_ok());
    assert!(revoke["seq"].as_u64() > json[1]["seq"].as_u64(), "{json}");
    assert_eq!(json[1]["reason"], Value::Null);

    // Other filters.
    let mints = server
        .run(&["audit", "--action", "key.mint", "--output", "json"])
        .json();
    assert_eq!(actions(&mints), ["key.mint", "key.mint"]);
    let by_admin = server
        .run(&["audit", "--actor", &admin_id, "--output", "json"])
        .json();
    assert_eq!(actions(&by_admin), ["key.revoke", "key.mint", "key.mint"]);
    let recent = server
        .run(&["audit", "--since", "1h", "--key", &id, "--output", "json"])
        .json();
    assert_eq!(actions(&recent), ["key.revoke", "key.mint"]);
    for args in [
        &["audit", "--since", "2099-01-01T00:00:00Z"][..],
        &["audit", "--until", "2001-01-01T00:00:00Z"],
        &["audit", "--key", "00000000001"],
    ] {
        assert_eq!(
            server.run(args).ok(),
            "No audit records match.\n",
            "{args:?}"
        );
    }
    let none = server
        .run(&[
            "audit",
            "--since",
            "2099-01-01T00:00:00Z",
            "--output",
            "json",
        ])
        .json();
    assert_eq!(none, serde_json::json!([]));
}

#[test]
fn audit_follows_pages_up_to_the_limit() {
    let server = TestServer::start();
    for _ in 0..5 {
        server.mint(&["--role", "validator"]);
    }
    let all = server
        .run(&["audit", "--action", "key.mint", "--output", "json"])
        .json();
    assert_eq!(all.as_array().unwrap().len(), 5);
    let limited = server
        .run(&[
            "audit", "--action", "key.mint", "--limit", "3", "--output", "json",
        ])
        .json();
    assert_eq!(
        limited.as_array().unwrap(),
        &all.as_array().unwrap()[..3],
        "the newest"
    );
}

#[test]
fn role_changes_are_audited_and_the_local_operator_is_named() {
    let server = TestServer::start();
    server
        .run(&[
            "role",
            "create",
            "reader",
            "--permission",
            "keyward:keys:read",
        ])
        .ok();
    server
        .run(&["role", "update", "reader", "--description", "reads"])
        .ok();
    server.run(&["role", "delete", "reader"]).ok();
    let json = server
        .run(&["audit", "--output", "json", "--limit", "3"])
        .json();
    assert_eq!(
        actions(&json),
        ["role.delete", "role.update", "role.create"]
    );
    assert!(
        json.as_array()
            .unwrap()
            .iter()
            .all(|r| r["target"] == "reader")
    );

    // The first admin key was made without a caller: `local`, or null.
    let stdout = server.run(&["audit"]).ok().to_owned();
    let first = table_rows(&stdout).pop().expect("a record");
    assert_eq!(first[1], "local", "{stdout}");
    let json = server.run(&["audit", "--output", "json"]).json();
    let oldest = json.as_array().unwrap().last().unwrap();
    assert_eq!(oldest["actor"], Value::Null, "{json}");
}
