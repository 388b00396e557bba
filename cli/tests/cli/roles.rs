//! End-to-end tests of `keywardctl role ...`: the real binary against the
//! real server, in-process with a fresh SQLite database per test.
//!
//! The roles are made of `keyward:` permissions, which the bootstrap admin
//! key (`keyward:*`) holds, so the server's escalation checks allow them;
//! those checks themselves are tested over gRPC in the server's own tests.

use serde_json::{Value, json};

use crate::helpers::{TestServer, field, table_rows};

/// The `name`s of a JSON array of roles.
fn names(json: &Value) -> Vec<&str> {
    json.as_array()
        .unwrap_or_else(|| panic!("not an array: {json}"))
        .iter()
        .map(|role| role["name"].as_str().expect("name"))
        .collect()
}

/// A JSON array of strings, sorted.
fn sorted(json: &Value) -> Vec<&str> {
    let mut items: Vec<&str> = json
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {json}"))
        .iter()
        .map(|item| item.as_str().expect("a string"))
        .collect();
    items.sort_unstable();
    items
}

#[test]
fn role_create_list_show_update_delete_round_trip() {
    let server = TestServer::start();

    // create, as a table
    let created = server.run(&[
        "role",
        "create",
        "auditor",
        "--permission",
        "keyward:audit:read",
        "--permission",
        "keyward:keys:read",
        "--description",
        "Reads keys and the audit log",
        "--max-ttl",
        "1h",
    ]);
    let stdout = created.ok();
    assert!(stdout.starts_with("Created role auditor.\n\n"), "{stdout}");
    assert_eq!(field(stdout, "name"), Some("auditor"));
    assert_eq!(
        field(stdout, "description"),
        Some("Reads keys and the audit log")
    );
    let permissions = field(stdout, "permissions").expect("permissions line");
    assert!(
        permissions.contains("keyward:audit:read") && permissions.contains("keyward:keys:read"),
        "{stdout}"
    );
    assert_eq!(field(stdout, "max ttl"), Some("1h"));
    assert_eq!(field(stdout, "builtin"), Some("no"));
    for time in ["created", "updated"] {
        assert!(
            field(stdout, time).is_some_and(|t| humantime::parse_rfc3339(t).is_ok()),
            "{time}: {stdout}"
        );
    }

    // create, as JSON, without a max TTL
    let json = server
        .run(&[
            "role",
            "create",
            "reader",
            "--permission",
            "keyward:keys:read",
            "--output",
            "json",
        ])
        .json();
    assert_eq!(json["name"], "reader");
    assert_eq!(json["permissions"], json!(["keyward:keys:read"]));
    assert_eq!(json["description"], Value::Null);
    assert_eq!(json["max_ttl"], Value::Null);
    assert_eq!(json["max_ttl_seconds"], Value::Null);
    assert_eq!(json["builtin"], false);

    // create again: the name is taken
    let taken = server.run(&[
        "role",
        "create",
        "reader",
        "--permission",
        "keyward:keys:read",
    ]);
    taken.error(&["already exists: role reader already exists"]);

    // list: by name, the built-in roles included
    let list = server.run(&["role", "list"]);
    let rows = table_rows(list.ok());
    assert_eq!(
        rows[0],
        [
            "NAME",
            "BUILTIN",
            "MAX",
            "TTL",
            "RATE",
            "LIMIT",
            "PERMISSIONS"
        ],
        "{list:#?}"
    );
    let row = |name: &str| {
        rows.iter()
            .find(|row| row[0] == name)
            .unwrap_or_else(|| panic!("no row for {name}: {list:#?}"))
            .clone()
    };
    assert_eq!(row("admin"), ["admin", "yes", "-", "-", "keyward:*"]);
    assert_eq!(
        row("validator"),
        ["validator", "yes", "-", "-", "keyward:validate"]
    );
    assert_eq!(
        row("reader"),
        ["reader", "no", "-", "-", "keyward:keys:read"]
    );
    let auditor = row("auditor");
    assert_eq!(auditor[..4], ["auditor", "no", "1h", "-"]);
    assert!(
        auditor[4].contains("keyward:audit:read,") || auditor[4].ends_with(",keyward:audit:read")
    );
    assert_eq!(rows.len(), 5, "{list:#?}");

    let json = server.run(&["role", "list", "--output", "json"]).json();
    assert_eq!(names(&json), ["admin", "auditor", "reader", "validator"]);
    assert_eq!(json[0]["builtin"], true);
    assert_eq!(json[1]["max_ttl_seconds"], 3600);

    // show
    let shown = server
        .run(&["role", "show", "auditor", "--output", "json"])
        .json();
    assert_eq!(shown["max_ttl"], "1h");
    assert_eq!(shown["description"], "Reads keys and the audit log");
    assert_eq!(
        sorted(&shown["permissions"]),
        ["keyward:audit:read", "keyward:keys:read"]
    );
    let shown = server.run(&["role", "show", "validator"]);
    assert_eq!(field(shown.ok(), "builtin"), Some("yes"));
    assert_eq!(field(&shown.stdout, "max ttl"), Some("none"));

    // update: permissions in and out, the max TTL cleared
    let json = server
        .run(&[
            "role",
            "update",
            "auditor",
            "--add-permission",
            "keyward:roles:read",
            "--remove-permission",
            "keyward:keys:read",
            "--clear-max-ttl",
            "--output",
            "json",
        ])
        .json();
    assert_eq!(
        sorted(&json["permissions"]),
        ["keyward:audit:read", "keyward:roles:read"]
    );
    assert_eq!(json["max_ttl"], Value::Null);
    assert_eq!(json["description"], "Reads keys and the audit log", "kept");

    // update: description and max TTL, as a table
    let updated = server.run(&[
        "role",
        "update",
        "auditor",
        "--description",
        "Audit only",
        "--max-ttl",
        "90m",
    ]);
    let stdout = updated.ok();
    assert!(stdout.starts_with("Updated role auditor.\n\n"), "{stdout}");
    assert_eq!(field(stdout, "description"), Some("Audit only"));
    assert_eq!(field(stdout, "max ttl"), Some("1h 30m"));
    assert_eq!(
        server
            .run(&["role", "show", "auditor", "--output", "json"])
            .json()["max_ttl_seconds"],
        5400
    );

    // delete
    assert_eq!(
        server.run(&["role", "delete", "reader"]).ok(),
        "Deleted role reader.\n"
    );
    server
        .run(&["role", "show", "reader"])
        .error(&["not found", "reader"]);
    assert_eq!(
        server
            .run(&["role", "delete", "auditor", "--output", "json"])
            .json(),
        json!({"name": "auditor", "deleted": true})
    );
    let json = server.run(&["role", "list", "--output", "json"]).json();
    assert_eq!(names(&json), ["admin", "validator"]);
}

#[test]
fn a_role_held_by_keys_cannot_be_deleted() {
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
    for _ in 0..2 {
        server.mint(&["--role", "reader", "--ttl", "30m"]);
    }
    let message = server
        .run(&["role", "delete", "reader"])
        .error(&["reader"])
        .to_owned();
    assert!(
        message.contains('2'),
        "names how many keys hold it: {message}"
    );
    // Still there.
    server.run(&["role", "show", "reader"]).ok();
}

#[test]
fn built_in_roles_cannot_be_changed_or_deleted() {
    let server = TestServer::start();
    server
        .run(&["role", "update", "admin", "--description", "mine now"])
        .error(&["admin"]);
    server
        .run(&[
            "role",
            "update",
            "validator",
            "--add-permission",
            "keyward:keys:read",
        ])
        .error(&["validator"]);
    server.run(&["role", "delete", "admin"]).error(&["admin"]);
    let json = server
        .run(&["role", "show", "admin", "--output", "json"])
        .json();
    assert_eq!(json["permissions"], json!(["keyward:*"]), "unchanged");
    assert_eq!(json["builtin"], true);
}

#[test]
fn refused_role_changes_are_one_line_errors() {
    let server = TestServer::start();
    server
        .run(&["role", "show", "nobody"])
        .error(&["not found"]);
    server
        .run(&["role", "update", "nobody", "--description", "x"])
        .error(&["not found"]);
    server
        .run(&["role", "delete", "nobody"])
        .error(&["not found"]);
    server
        .run(&[
            "role",
            "create",
            "Bad Name",
            "--permission",
            "keyward:keys:read",
        ])
        .error(&["invalid argument"]);
    server
        .run(&["role", "create", "everything", "--permission", "*"])
        .error(&[]);
    server
        .run(&["role", "create", "dup", "--permission", "keyward:keys:read"])
        .ok();
    server
        .run(&["role", "create", "dup", "--permission", "keyward:keys:read"])
        .error(&["dup"]);
}
