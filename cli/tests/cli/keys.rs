//! End-to-end tests of the key commands (mint, list, show, rotate, revoke,
//! verify), `init`, and what every command shares: flags, the admin key,
//! errors, help.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::helpers::{TestServer, field, keywardctl, run, table_rows};

/// The `id`s of a JSON array of keys.
fn ids(json: &Value) -> BTreeSet<String> {
    json.as_array()
        .unwrap_or_else(|| panic!("not an array: {json}"))
        .iter()
        .map(|key| key["id"].as_str().expect("id").to_owned())
        .collect()
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|id| (*id).to_owned()).collect()
}

/// A well-formed key id that no key has (11 base62 characters).
const UNKNOWN_ID: &str = "00000000001";

#[test]
fn mint_prints_the_new_key_in_table_and_json() {
    let server = TestServer::start();

    let table = server.run(&["mint", "--role", "validator"]);
    let stdout = table.ok();
    let id = field(stdout, "id").expect("id line");
    let key = field(stdout, "key").expect("key line");
    assert!(key.starts_with(&format!("kw_{id}")), "{stdout}");
    assert!(stdout.contains("shown only this once"), "{stdout}");
    assert_eq!(field(stdout, "roles"), Some("validator"));
    assert_eq!(field(stdout, "expires"), Some("never"));

    let json = server
        .run(&[
            "mint",
            "--output",
            "json",
            "--prefix",
            "ci",
            "--role",
            "validator",
            "--label",
            "env=prod",
            "--label",
            "team=infra",
            "--owner",
            "deploy-bot",
            "--description",
            "CI deploys",
            "--ttl",
            "1h",
        ])
        .json();
    let id = json["id"].as_str().unwrap();
    let key = json["key"].as_str().unwrap();
    assert!(key.starts_with(&format!("ci_{id}")), "{json}");
    assert_eq!(json["prefix"], "ci");
    assert_eq!(json["state"], "active");
    assert_eq!(json["roles"], serde_json::json!(["validator"]));
    assert_eq!(
        json["labels"],
        serde_json::json!({"env": "prod", "team": "infra"})
    );
    assert_eq!(json["owner"], "deploy-bot");
    assert_eq!(json["description"], "CI deploys");
    let expires = humantime::parse_rfc3339(json["expires_at"].as_str().unwrap()).unwrap();
    let in_an_hour = std::time::SystemTime::now() + std::time::Duration::from_hours(1);
    let off = in_an_hour
        .duration_since(expires)
        .unwrap_or_else(|e| e.duration());
    assert!(
        off.as_secs() < 120,
        "expiry {json} is not about an hour away"
    );
}

#[test]
fn mint_with_expires_at_and_refused_mints() {
    let server = TestServer::start();
    let json = server
        .run(&[
            "mint",
            "--role",
            "validator",
            "--expires-at",
            "2099-01-31T12:00:00Z",
            "--output",
            "json",
        ])
        .json();
    assert_eq!(json["expires_at"], "2099-01-31T12:00:00Z");

    // The server's checks surface as one-line errors with exit 1.
    server
        .run(&["mint", "--expires-at", "2001-01-01T00:00:00Z"])
        .error(&["invalid argument"]);
    server
        .run(&["mint", "--role", "no-such-role"])
        .error(&["no-such-role"]);
    server
        .run(&["mint", "--prefix", "Not_A_Prefix"])
        .error(&["prefix"]);
}

#[test]
fn list_filters_by_label_owner_role_and_state() {
    let server = TestServer::start();
    let admin_id = ids(&server.run(&["list", "--output", "json"]).json());
    assert_eq!(admin_id.len(), 1, "only the bootstrap admin key");
    let admin_id = admin_id.into_iter().next().unwrap();

    let (a, _) = server.mint(&[
        "--role",
        "validator",
        "--label",
        "env=prod",
        "--owner",
        "alice",
    ]);
    let (b, _) = server.mint(&[
        "--role",
        "validator",
        "--label",
        "env=dev",
        "--owner",
        "bob",
    ]);
    let (c, _) = server.mint(&[
        "--role", "admin", "--label", "env=prod", "--label", "team=x", "--owner", "bob",
    ]);
    server.run(&["revoke", &b]).ok();

    let list = |args: &[&str]| {
        let mut full = vec!["list", "--output", "json"];
        full.extend_from_slice(args);
        ids(&server.run(&full).json())
    };
    assert_eq!(list(&[]), set(&[&a, &b, &c, &admin_id]));
    assert_eq!(list(&["--label", "env=prod"]), set(&[&a, &c]));
    assert_eq!(
        list(&["--label", "env=prod", "--label", "team=x"]),
        set(&[&c])
    );
    assert_eq!(list(&["--owner", "bob"]), set(&[&b, &c]));
    assert_eq!(list(&["--role", "admin"]), set(&[&c, &admin_id]));
    assert_eq!(list(&["--state", "revoked"]), set(&[&b]));
    assert_eq!(list(&["--state", "active", "--owner", "bob"]), set(&[&c]));
    assert_eq!(list(&["--owner", "nobody"]), set(&[]));

    // The JSON array carries the key metadata.
    let json = server
        .run(&["list", "--output", "json", "--state", "revoked"])
        .json();
    assert_eq!(json[0]["state"], "revoked");
    assert_eq!(json[0]["owner"], "bob");
    assert!(json[0]["revoked_at"].is_string(), "{json}");

    // The table has the documented columns and one row per key.
    let table = server.run(&["list", "--owner", "bob"]);
    let lines: Vec<&str> = table.ok().lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        [
            "ID",
            "PREFIX",
            "STATE",
            "ROLES",
            "PERMISSIONS",
            "OWNER",
            "LABELS",
            "CIDRS",
            "CREATED",
            "EXPIRES",
            "LAST",
            "USED"
        ]
    );
    assert_eq!(lines.len(), 3, "{lines:#?}");
    let row_b = lines.iter().find(|l| l.starts_with(&b)).expect("row for b");
    let cells: Vec<&str> = row_b.split_whitespace().collect();
    assert_eq!(
        &cells[1..8],
        ["kw", "revoked", "validator", "-", "bob", "env=dev", "any"]
    );
    assert_eq!(cells[9], "never");
    assert_eq!(cells[10], "never", "never validated");
    let row_c = lines.iter().find(|l| l.starts_with(&c)).expect("row for c");
    assert!(row_c.contains("env=prod,team=x"), "{row_c}");

    assert_eq!(
        server.run(&["list", "--owner", "nobody"]).ok(),
        "No keys match.\n"
    );
}

#[test]
fn list_follows_pages_and_stops_at_the_limit() {
    let server = TestServer::start();
    for _ in 0..4 {
        server.mint(&["--role", "validator"]);
    }
    let all = server.run(&["list", "--output", "json"]).json();
    assert_eq!(ids(&all).len(), 5);

    // One key per page: the CLI must follow next_page_token to the end,
    // without repeating or skipping a key.
    let paged = server
        .run(&["list", "--output", "json", "--page-size", "1"])
        .json();
    assert_eq!(paged.as_array().unwrap().len(), 5);
    assert_eq!(ids(&paged), ids(&all));

    for args in [&["--limit", "2"][..], &["--limit", "3", "--page-size", "2"]] {
        let mut full = vec!["list", "--output", "json"];
        full.extend_from_slice(args);
        let limited = server.run(&full).json();
        let expected: usize = args[1].parse().unwrap();
        assert_eq!(limited.as_array().unwrap().len(), expected, "{args:?}");
    }
}

#[test]
fn show_prints_metadata_but_never_the_secret() {
    let server = TestServer::start();
    let (id, key) = server.mint(&[
        "--role",
        "validator",
        "--label",
        "env=prod",
        "--owner",
        "alice",
        "--description",
        "for the tests",
    ]);
    server.forbid_printing(&key);

    let table = server.run(&["show", &id]);
    let stdout = table.ok();
    assert_eq!(field(stdout, "id"), Some(id.as_str()));
    assert_eq!(field(stdout, "state"), Some("active"));
    assert_eq!(field(stdout, "labels"), Some("env=prod"));
    assert_eq!(field(stdout, "owner"), Some("alice"));
    assert_eq!(field(stdout, "description"), Some("for the tests"));
    assert!(field(stdout, "created").is_some_and(|t| humantime::parse_rfc3339(t).is_ok()));

    // `--output` is global: before or after the verb.
    for args in [
        &["--output", "json", "show", &id][..],
        &["show", &id, "--output", "json"],
    ] {
        let json = server.run(args).json();
        assert_eq!(json["id"], id.as_str());
        assert_eq!(json["labels"]["env"], "prod");
        assert!(json.get("key").is_none(), "{json}");
    }
}

#[test]
fn rotate_with_grace_keeps_both_keys_working() {
    let server = TestServer::start();
    let (old_id, old_key) = server.mint(&["--role", "validator", "--owner", "alice"]);

    let json = server
        .run(&["rotate", &old_id, "--grace", "1h", "--output", "json"])
        .json();
    let new_id = json["id"].as_str().unwrap().to_owned();
    let new_key = json["key"].as_str().unwrap().to_owned();
    assert_ne!(new_id, old_id);
    assert!(new_key.starts_with(&format!("kw_{new_id}")));
    assert_eq!(json["owner"], "alice", "same settings");
    assert_eq!(json["previous"]["id"], old_id.as_str());
    assert!(json["previous"]["expires_at"].is_string(), "{json}");
    assert!(json["previous"]["revoked_at"].is_null(), "{json}");

    for key in [&old_key, &new_key] {
        server.forbid_printing(key);
        let json = server
            .run_with_stdin(&["verify", "--output", "json"], &format!("{key}\n"))
            .json();
        assert_eq!(json["valid"], true, "{json}");
    }

    // A rotated key cannot be rotated again.
    server
        .run(&["rotate", &old_id])
        .error(&["failed precondition"]);

    // Table output names the new key and when the old one stops working.
    let table = server.run(&["rotate", &new_id, "--grace", "30m"]);
    let stdout = table.ok();
    let newest_id = field(stdout, "id").expect("id");
    assert!(field(stdout, "key").is_some_and(|k| k.starts_with(&format!("kw_{newest_id}"))));
    assert!(
        stdout.contains(&format!("The old key {new_id} keeps working until ")),
        "{stdout}"
    );
}

#[test]
fn rotate_without_grace_revokes_the_old_key() {
    let server = TestServer::start();
    let (old_id, old_key) = server.mint(&["--role", "validator"]);
    server.forbid_printing(&old_key);
    let json = server.run(&["rotate", &old_id, "--output", "json"]).json();
    assert_eq!(json["previous"]["state"], "revoked", "{json}");
    let verdict = server.run_with_stdin(&["verify"], &old_key);
    assert_eq!(verdict.code, 1, "{verdict:#?}");
    assert_eq!(field(&verdict.stdout, "denial"), Some("INVALID"));
}

#[test]
fn revoke_makes_verify_fail_and_reports_an_earlier_revocation() {
    let server = TestServer::start();
    let (id, key) = server.mint(&["--role", "validator"]);
    server.forbid_printing(&key);

    let before = server.run_with_stdin(&["verify"], &format!("{key}\n"));
    assert_eq!(field(before.ok(), "valid"), Some("yes"));
    assert_eq!(field(&before.stdout, "key id"), Some(id.as_str()));

    let revoked = server.run(&["revoke", &id, "--reason", "leaked in a log"]);
    let stdout = revoked.ok();
    assert!(
        stdout.starts_with(&format!("Revoked key {id} at ")),
        "{stdout}"
    );
    assert!(stdout.contains("Reason: leaked in a log"), "{stdout}");

    let after = server.run_with_stdin(&["verify"], &format!("{key}\n"));
    assert_eq!(after.code, 1, "{after:#?}");
    assert!(after.stderr.is_empty(), "{after:#?}");
    assert_eq!(field(&after.stdout, "valid"), Some("no"));
    assert_eq!(field(&after.stdout, "denial"), Some("INVALID"));
    assert_eq!(
        field(&after.stdout, "key id"),
        None,
        "INVALID says nothing more"
    );

    let again = server.run(&["revoke", &id]);
    assert!(
        again
            .ok()
            .contains(&format!("Key {id} was already revoked at ")),
        "{again:#?}"
    );
    let json = server.run(&["revoke", &id, "--output", "json"]).json();
    assert_eq!(json["already_revoked"], true);
    assert_eq!(
        json["revoke_reason"], "leaked in a log",
        "the first revocation"
    );
    assert_eq!(json["state"], "revoked");
}

#[test]
fn verify_reports_forbidden_for_a_missing_permission() {
    let server = TestServer::start();
    let (id, key) = server.mint(&["--role", "validator"]);
    server.forbid_printing(&key);

    let forbidden = server.run_with_stdin(&["verify", "--permission", "deploy:write"], &key);
    assert_eq!(forbidden.code, 1, "{forbidden:#?}");
    assert_eq!(field(&forbidden.stdout, "denial"), Some("FORBIDDEN"));
    assert_eq!(field(&forbidden.stdout, "key id"), Some(id.as_str()));

    let json = server.run_with_stdin(
        &["verify", "--output", "json", "--permission", "deploy:write"],
        &key,
    );
    assert_eq!(json.code, 1, "{json:#?}");
    let json: Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(json["valid"], false);
    assert_eq!(json["denial"], "FORBIDDEN");
    assert_eq!(json["key_id"], id.as_str());
    assert_eq!(json["roles"], serde_json::json!(["validator"]));

    let granted = server
        .run_with_stdin(
            &[
                "verify",
                "--output",
                "json",
                "--permission",
                "keyward:validate",
            ],
            &key,
        )
        .json();
    assert_eq!(granted["valid"], true);
    assert_eq!(granted["denial"], Value::Null);
    assert!(
        granted["permissions"]
            .as_array()
            .unwrap()
            .contains(&"keyward:validate".into()),
        "{granted}"
    );
}

/// The elements of a JSON array of strings, sorted (the server may keep
/// permissions and CIDRs in any order).
fn sorted_strings(json: &Value) -> Vec<String> {
    let mut items: Vec<String> = json
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {json}"))
        .iter()
        .map(|item| item.as_str().expect("a string").to_owned())
        .collect();
    items.sort();
    items
}

#[test]
fn mint_with_permissions_and_cidrs_then_verify_by_client_ip() {
    let server = TestServer::start();
    // Permissions the bootstrap admin key holds itself (`keyward:*`), so no
    // escalation check can get in the way of what this test is about.
    let json = server
        .run(&[
            "mint",
            "--output",
            "json",
            "--permission",
            "keyward:validate",
            "--permission",
            "keyward:keys:read",
            "--allow-cidr",
            "10.0.0.0/8",
            "--allow-cidr",
            "2001:db8::/32",
        ])
        .json();
    let id = json["id"].as_str().unwrap().to_owned();
    let key = json["key"].as_str().unwrap().to_owned();
    server.forbid_printing(&key);
    assert_eq!(
        sorted_strings(&json["permissions"]),
        ["keyward:keys:read", "keyward:validate"]
    );
    assert_eq!(
        sorted_strings(&json["allowed_cidrs"]),
        ["10.0.0.0/8", "2001:db8::/32"]
    );
    assert_eq!(json["roles"], json!([]));

    // `show` and `list` carry them too.
    let shown = server.run(&["show", &id]);
    let permissions = field(shown.ok(), "permissions").expect("permissions line");
    assert!(permissions.contains("keyward:validate"), "{shown:#?}");
    assert!(permissions.contains("keyward:keys:read"), "{shown:#?}");
    let cidrs = field(&shown.stdout, "allowed cidrs").expect("allowed cidrs line");
    assert!(cidrs.contains("10.0.0.0/8") && cidrs.contains("2001:db8::/32"));
    let json = server.run(&["show", &id, "--output", "json"]).json();
    assert_eq!(
        sorted_strings(&json["allowed_cidrs"]),
        ["10.0.0.0/8", "2001:db8::/32"]
    );
    let list = server.run(&["list"]);
    let row = table_rows(list.ok())
        .into_iter()
        .find(|row| row[0] == id)
        .expect("a row for the key");
    assert!(row[4].contains("keyward:validate"), "{row:?}");
    assert!(row[7].contains("10.0.0.0/8"), "{row:?}");
    let (plain_id, _) = server.mint(&["--role", "validator"]);
    assert_eq!(
        field(server.run(&["show", &plain_id]).ok(), "allowed cidrs"),
        Some("any"),
        "no allow-list: any address"
    );

    let verify = |args: &[&str]| {
        let mut full = vec!["verify"];
        full.extend_from_slice(args);
        server.run_with_stdin(&full, &format!("{key}\n"))
    };
    for inside in ["10.1.2.3", "2001:db8::1"] {
        let ok = verify(&["--client-ip", inside, "--permission", "keyward:validate"]);
        assert_eq!(field(ok.ok(), "valid"), Some("yes"), "{inside}");
        assert_eq!(field(&ok.stdout, "key id"), Some(id.as_str()));
    }
    for outside in [
        &["--client-ip", "192.168.0.1"][..],
        &["--client-ip", "2001:db9::1"],
        &[],
    ] {
        let refused = verify(outside);
        assert_eq!(refused.code, 1, "{outside:?}: {refused:#?}");
        assert!(refused.stderr.is_empty(), "{refused:#?}");
        assert_eq!(field(&refused.stdout, "denial"), Some("FORBIDDEN"));
        assert_eq!(field(&refused.stdout, "key id"), Some(id.as_str()));
    }
    let refused = verify(&["--client-ip", "192.168.0.1", "--output", "json"]);
    assert_eq!(refused.code, 1, "{refused:#?}");
    let json: Value = serde_json::from_str(&refused.stdout).unwrap();
    assert_eq!(json["denial"], "FORBIDDEN");

    // A rotated key keeps its direct permissions and its allow-list.
    let json = server.run(&["rotate", &id, "--output", "json"]).json();
    assert_eq!(
        sorted_strings(&json["permissions"]),
        ["keyward:keys:read", "keyward:validate"]
    );
    assert_eq!(
        sorted_strings(&json["allowed_cidrs"]),
        ["10.0.0.0/8", "2001:db8::/32"]
    );
    let rotated = server.run(&["rotate", json["id"].as_str().unwrap()]);
    assert!(
        field(rotated.ok(), "allowed cidrs").is_some_and(|c| c.contains("10.0.0.0/8")),
        "{rotated:#?}"
    );
}

#[test]
fn the_server_names_a_bad_permission_or_cidr() {
    let server = TestServer::start();
    server
        .run(&["mint", "--allow-cidr", "10.0.0.0/33"])
        .error(&["invalid argument", "allowed_cidrs"]);
    server
        .run(&["mint", "--permission", "Not A Permission"])
        .error(&["invalid argument", "permissions"]);
}

#[test]
fn bulk_revoke_lists_first_and_needs_yes() {
    let server = TestServer::start();
    let (a, key_a) = server.mint(&[
        "--role",
        "validator",
        "--label",
        "env=dev",
        "--owner",
        "alice",
    ]);
    let (b, key_b) = server.mint(&[
        "--role",
        "validator",
        "--label",
        "env=dev",
        "--owner",
        "bob",
    ]);
    let (c, key_c) = server.mint(&["--role", "validator", "--label", "env=prod"]);
    for key in [&key_a, &key_b, &key_c] {
        server.forbid_printing(key);
    }
    let valid = |key: &str| {
        let outcome = server.run_with_stdin(&["verify"], &format!("{key}\n"));
        field(&outcome.stdout, "valid") == Some("yes")
    };

    // --dry-run: how many and which, and nothing changes.
    let dry = server.run(&["revoke", "--label", "env=dev", "--dry-run"]);
    let stdout = dry.ok();
    assert!(
        stdout.starts_with("2 keys would be revoked (dry run, nothing changed):\n"),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("  {a}\n")) && stdout.contains(&format!("  {b}\n")));
    assert!(!stdout.contains(&c), "{stdout}");
    let json = server
        .run(&[
            "revoke",
            "--label",
            "env=dev",
            "--dry-run",
            "--output",
            "json",
        ])
        .json();
    assert_eq!(json["dry_run"], true);
    assert_eq!(json["count"], 2);
    assert_eq!(ids_of(&json["key_ids"]), set(&[&a, &b]));
    assert!(valid(&key_a) && valid(&key_b), "a dry run revokes nothing");

    // Without --yes: the matches are listed, then a refusal with the count.
    let refused = server.run(&["revoke", "--label", "env=dev", "--reason", "cleanup"]);
    assert_eq!(refused.code, 1, "{refused:#?}");
    assert_eq!(
        refused.stderr,
        "error: 2 keys would be revoked; pass --yes to revoke them \
         (or --dry-run to only list them)\n"
    );
    assert!(
        refused.stdout.starts_with("2 keys match:\n"),
        "{refused:#?}"
    );
    assert!(refused.stdout.contains(&a) && refused.stdout.contains(&b));
    server
        .run(&["revoke", "--label", "env=dev", "--output", "json"])
        .error(&["2 keys would be revoked", "--yes"]);
    assert!(valid(&key_a) && valid(&key_b), "a refusal revokes nothing");

    // --yes, narrowed by owner.
    let revoked = server.run(&[
        "revoke", "--label", "env=dev", "--owner", "alice", "--reason", "left", "--yes",
    ]);
    assert_eq!(
        revoked.ok(),
        format!("Revoked 1 key:\n  {a}\n"),
        "{revoked:#?}"
    );
    assert!(!valid(&key_a), "revoked");
    assert!(valid(&key_b), "another owner");
    assert_eq!(
        server.run(&["show", &a, "--output", "json"]).json()["revoke_reason"],
        "left"
    );

    let json = server
        .run(&["revoke", "--label", "env=dev", "--yes", "--output", "json"])
        .json();
    assert_eq!(json, json!({"dry_run": false, "count": 1, "key_ids": [b]}));
    assert!(!valid(&key_b));
    assert!(valid(&key_c), "other labels are untouched");

    // Nothing left to match: a no-op, not an error.
    for args in [
        &["revoke", "--label", "env=dev", "--yes"][..],
        &["revoke", "--label", "env=dev"],
        &["revoke", "--label", "env=staging", "--dry-run"],
    ] {
        let outcome = server.run(args);
        assert!(
            outcome.ok().contains("no keys match"),
            "{args:?}: {outcome:#?}"
        );
    }
    let json = server
        .run(&[
            "revoke",
            "--label",
            "env=dev",
            "--dry-run",
            "--output",
            "json",
        ])
        .json();
    assert_eq!(json, json!({"dry_run": true, "count": 0, "key_ids": []}));
}

/// The strings of a JSON array, as a set.
fn ids_of(json: &Value) -> BTreeSet<String> {
    sorted_strings(json).into_iter().collect()
}

#[test]
fn verify_needs_exactly_one_key_on_stdin() {
    let server = TestServer::start();
    server
        .run_with_stdin(&["verify"], "")
        .error(&["no key on stdin"]);
    server
        .run_with_stdin(&["verify"], "\n")
        .error(&["no key on stdin"]);
    server
        .run_with_stdin(&["verify"], "kw_a\nkw_b\n")
        .error(&["exactly one key"]);
    // Garbage is a normal "not valid" answer, not an error.
    let garbage = server.run_with_stdin(&["verify"], "not a key\n");
    assert_eq!(garbage.code, 1, "{garbage:#?}");
    assert_eq!(field(&garbage.stdout, "denial"), Some("INVALID"));
    assert!(!garbage.stdout.contains("not a key"), "never echo the key");
}

#[test]
fn init_creates_a_working_admin_key_and_refuses_to_run_twice() {
    let dir = tempfile::tempdir().unwrap();
    let database_url = format!("sqlite://{}", dir.path().join("keyward.db").display());

    let first = run(
        keywardctl().args(["init", "--database-url", &database_url]),
        None,
    );
    let stdout = first.ok();
    let id = field(stdout, "id").expect("id line").to_owned();
    let key = field(stdout, "key").expect("key line").to_owned();
    assert!(key.starts_with(&format!("kw_{id}")), "{stdout}");
    assert!(stdout.contains("shown only this once"), "{stdout}");

    let second = run(
        keywardctl().args(["init", "--database-url", &database_url]),
        None,
    );
    let message = second.error(&[]).to_owned();
    assert!(!message.contains(&key), "{message}");
    assert!(message.to_lowercase().contains("already"), "{message}");

    // The printed key is the admin key of that database.
    let server = TestServer::start_on(Some(dir), &database_url);
    assert_eq!(
        server.admin_key, "",
        "an initialised database gets no bootstrap key"
    );
    let json = server
        .run_cmd(
            keywardctl()
                .env("KEYWARD_SERVER", &server.url)
                .env("KEYWARD_ADMIN_KEY", &key)
                .args(["show", &id, "--output", "json"]),
            None,
        )
        .json();
    assert_eq!(json["roles"], serde_json::json!(["admin"]));
}

#[test]
fn init_works_on_postgres_once() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let Some(database) = runtime.block_on(keyward::testing::ScratchDatabase::create()) else {
        return;
    };
    let init = || {
        run(
            keywardctl().args(["init", "--database-url", database.url()]),
            None,
        )
    };
    let first = init();
    let id = field(first.ok(), "id").expect("id line").to_owned();
    let key = field(first.ok(), "key").expect("key line").to_owned();
    let second = init();
    let message = second.error(&[]);
    assert!(message.to_lowercase().contains("already"), "{message}");
    assert!(!message.contains(&key), "{message}");

    let server = TestServer::start_on(None, database.url());
    let json = server
        .run_cmd(
            keywardctl()
                .env("KEYWARD_SERVER", &server.url)
                .env("KEYWARD_ADMIN_KEY", &key)
                .args(["show", &id, "--output", "json"]),
            None,
        )
        .json();
    assert_eq!(json["roles"], serde_json::json!(["admin"]));
}

#[test]
fn init_prints_json_and_reads_the_database_url_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyward.db");
    let json = run(
        keywardctl()
            .env(
                "KEYWARD_DATABASE_URL",
                format!("sqlite://{}", path.display()),
            )
            .args(["init", "--output", "json"]),
        None,
    )
    .json();
    let id = json["id"].as_str().expect("id");
    let key = json["key"].as_str().expect("key");
    assert!(key.starts_with(&format!("kw_{id}")), "{json}");
    assert!(path.exists(), "init used KEYWARD_DATABASE_URL");
}

#[test]
fn usage_errors_exit_2_and_name_the_flag() {
    let fake_key = "kw_this_admin_key_must_never_be_printed";
    let cases: &[(&[&str], &str)] = &[
        (&["mint", "--ttl", "5 parsecs"], "--ttl"),
        (&["mint", "--ttl", "0s"], "--ttl"),
        (&["mint", "--expires-at", "tomorrow"], "--expires-at"),
        (
            &[
                "mint",
                "--ttl",
                "1h",
                "--expires-at",
                "2099-01-01T00:00:00Z",
            ],
            "--ttl",
        ),
        (&["rotate", "AbCdEfGhIjK", "--grace", "soon"], "--grace"),
        (&["mint", "--label", "env"], "--label"),
        (&["list", "--label", "=prod"], "--label"),
        (&["list", "--state", "sleeping"], "--state"),
        (&["list", "--limit", "0"], "--limit"),
        (
            &["mint", "--label", "env=a", "--label", "env=b"],
            "--label env",
        ),
        (&["show"], "<ID>"),
        (&["--server", "http://bad host", "list"], "--server"),
        (&["verify", "--client-ip", "10.0.0.300"], "--client-ip"),
        (&["revoke"], "--label"),
        (&["revoke", "AbCdEfGhIjK", "--label", "env=dev"], "--label"),
        (&["revoke", "AbCdEfGhIjK", "--yes"], "--yes"),
        (
            &["revoke", "--label", "env=a", "--label", "env=b"],
            "--label env",
        ),
        (&["role", "create", "deployer"], "--permission"),
        (
            &[
                "role",
                "create",
                "deployer",
                "--permission",
                "a:b",
                "--max-ttl",
                "0s",
            ],
            "--max-ttl",
        ),
        (&["role", "update", "deployer"], "--add-permission"),
        (
            &[
                "role",
                "update",
                "deployer",
                "--max-ttl",
                "1h",
                "--clear-max-ttl",
            ],
            "--clear-max-ttl",
        ),
        (&["role", "show"], "<NAME>"),
        (&["role", "rename", "a", "b"], "rename"),
        (&["audit", "--since", "5x"], "--since"),
        (&["audit", "--until", "1h"], "--until"),
        (&["audit", "--limit", "0"], "--limit"),
    ];
    for (args, flag) in cases {
        let outcome = run(
            keywardctl()
                .env("KEYWARD_SERVER", "http://127.0.0.1:1")
                .env("KEYWARD_ADMIN_KEY", fake_key)
                .args(*args),
            None,
        );
        assert_eq!(outcome.code, 2, "{args:?}: {outcome:#?}");
        assert!(
            outcome.stderr.starts_with("error: "),
            "{args:?}: {outcome:#?}"
        );
        assert!(
            outcome.stderr.contains(flag),
            "{args:?} names {flag}: {outcome:#?}"
        );
        assert!(!outcome.stderr.contains(fake_key) && !outcome.stdout.contains(fake_key));
    }
}

#[test]
fn unknown_and_malformed_key_ids_are_errors() {
    let server = TestServer::start();
    for verb in ["show", "rotate", "revoke"] {
        server.run(&[verb, UNKNOWN_ID]).error(&["not found"]);
    }
    server
        .run(&["show", "not-a-key-id"])
        .error(&["invalid argument"]);
}

#[test]
fn an_unreachable_server_is_named() {
    let outcome = run(
        keywardctl().env("KEYWARD_ADMIN_KEY", "kw_whatever").args([
            "--server",
            "127.0.0.1:1",
            "list",
        ]),
        None,
    );
    outcome.error(&["cannot reach keyward at http://127.0.0.1:1: connection refused"]);
    assert!(!outcome.stderr.contains("kw_whatever"));

    // The same through KEYWARD_SERVER, for every verb that talks to it.
    for args in [
        &["show", UNKNOWN_ID][..],
        &["mint"],
        &["revoke", UNKNOWN_ID],
    ] {
        run(
            keywardctl()
                .env("KEYWARD_SERVER", "http://127.0.0.1:1")
                .env("KEYWARD_ADMIN_KEY", "kw_whatever")
                .args(args),
            None,
        )
        .error(&["cannot reach keyward at http://127.0.0.1:1"]);
    }
}

/// A URL that promises TLS is never downgraded: against a plaintext server
/// the TLS handshake fails, and the admin key is never sent.
#[test]
fn an_https_url_to_a_plaintext_server_fails_at_the_handshake() {
    let server = TestServer::start();
    let https = server.url.replacen("http://", "https://", 1);
    let ca = keyward::testing::tls::TestPki::new(false);
    let ca = ca.server_ca_path();
    for (source, run) in [
        (
            "flag",
            server.run(&[
                "--server",
                &https,
                "--ca-cert",
                ca.to_str().unwrap(),
                "list",
            ]),
        ),
        (
            "env",
            server.run_cmd(
                server
                    .cmd(&["list"])
                    .env("KEYWARD_SERVER", &https)
                    .env("KEYWARD_CA_CERT", &ca),
                None,
            ),
        ),
    ] {
        let stderr = run.error(&["cannot reach keyward at https://"]);
        assert!(!stderr.contains(&server.admin_key), "{source}: {stderr}");
    }
}

#[test]
fn a_missing_admin_key_says_how_to_give_one() {
    let server = TestServer::start();
    let expected = "error: no admin key: set KEYWARD_ADMIN_KEY or pass --admin-key-file PATH \
                    (the server writes the first one to keyward-admin.key)\n";
    let mut cmd = keywardctl();
    cmd.env("KEYWARD_SERVER", &server.url).arg("list");
    let stderr = server.run_cmd(&mut cmd, None).error(&[]).to_owned();
    assert_eq!(stderr, expected);

    let mut cmd = keywardctl();
    cmd.env("KEYWARD_SERVER", &server.url)
        .env("KEYWARD_ADMIN_KEY", "")
        .arg("list");
    assert_eq!(server.run_cmd(&mut cmd, None).error(&[]), expected);
}

#[test]
fn the_admin_key_file_works_and_wins_over_the_environment() {
    let server = TestServer::start();
    let file = server.admin_key_file.to_str().unwrap();

    // The flag, with a wrong key in the environment that must lose.
    let mut cmd = keywardctl();
    cmd.env("KEYWARD_SERVER", &server.url)
        .env("KEYWARD_ADMIN_KEY", "kw_wrong")
        .args(["list", "--admin-key-file", file, "--output", "json"]);
    assert_eq!(ids(&server.run_cmd(&mut cmd, None).json()).len(), 1);

    // KEYWARD_ADMIN_KEY_FILE, and a server address without a scheme.
    let mut cmd = keywardctl();
    cmd.env(
        "KEYWARD_SERVER",
        server.url.strip_prefix("http://").unwrap(),
    )
    .env("KEYWARD_ADMIN_KEY_FILE", file)
    .args(["--output", "json", "list"]);
    assert_eq!(ids(&server.run_cmd(&mut cmd, None).json()).len(), 1);

    let mut cmd = keywardctl();
    cmd.env("KEYWARD_SERVER", &server.url).args([
        "list",
        "--admin-key-file",
        "/nonexistent/keyward-admin.key",
    ]);
    server
        .run_cmd(&mut cmd, None)
        .error(&["cannot read admin key file /nonexistent/keyward-admin.key"]);
}

#[test]
fn a_wrong_admin_key_is_not_accepted() {
    let server = TestServer::start();
    // Well-formed but unknown, garbage, and real but revoked.
    let (revoked_id, revoked_key) = server.mint(&["--role", "admin"]);
    server.run(&["revoke", &revoked_id]).ok();
    let mut tampered = server.admin_key.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'a' { 'b' } else { 'a' });

    for wrong in [tampered.as_str(), "kw_garbage", revoked_key.as_str()] {
        server.forbid_printing(wrong);
        let mut cmd = keywardctl();
        cmd.env("KEYWARD_SERVER", &server.url)
            .env("KEYWARD_ADMIN_KEY", wrong)
            .arg("list");
        server
            .run_cmd(&mut cmd, None)
            .error(&["the admin key was not accepted"]);
    }

    // A real key without `keyward:admin` is authenticated but not allowed.
    let (_, validator_key) = server.mint(&["--role", "validator"]);
    server.forbid_printing(&validator_key);
    let mut cmd = keywardctl();
    cmd.env("KEYWARD_SERVER", &server.url)
        .env("KEYWARD_ADMIN_KEY", &validator_key)
        .arg("list");
    server
        .run_cmd(&mut cmd, None)
        .error(&["the admin key is not allowed to do this"]);
}

#[test]
fn help_explains_commands_flags_and_environment() {
    let help = |args: &[&str]| run(keywardctl().args(args), None).ok().to_owned();

    let top = help(&["--help"]);
    for needle in [
        "init",
        "mint",
        "list",
        "show",
        "rotate",
        "revoke",
        "verify",
        "role",
        "audit",
        "KEYWARD_SERVER",
        "KEYWARD_ADMIN_KEY",
        "KEYWARD_ADMIN_KEY_FILE",
        "--output",
    ] {
        assert!(top.contains(needle), "--help lacks {needle}:\n{top}");
    }
    let mint = help(&["mint", "--help"]);
    for needle in [
        "--ttl",
        "--expires-at",
        "--label <KEY=VALUE>",
        "--role",
        "--permission <PERMISSION>",
        "--allow-cidr <CIDR>",
        "KEYWARD_SERVER",
    ] {
        assert!(mint.contains(needle), "mint --help lacks {needle}:\n{mint}");
    }
    let revoke = help(&["revoke", "--help"]);
    for needle in [
        "--label <KEY=VALUE>",
        "--owner",
        "--dry-run",
        "--yes",
        "--reason",
    ] {
        assert!(
            revoke.contains(needle),
            "revoke --help lacks {needle}:\n{revoke}"
        );
    }
    let role = help(&["role", "--help"]);
    for needle in ["create", "list", "show", "update", "delete", "built-in"] {
        assert!(role.contains(needle), "role --help lacks {needle}:\n{role}");
    }
    let update = help(&["role", "update", "--help"]);
    for needle in [
        "--add-permission",
        "--remove-permission",
        "--description",
        "--max-ttl",
        "--clear-max-ttl",
    ] {
        assert!(
            update.contains(needle),
            "role update --help lacks {needle}:\n{update}"
        );
    }
    for verb in ["create", "list", "show", "delete"] {
        let text = help(&["role", verb, "--help"]);
        assert!(text.contains("role"), "role {verb} --help:\n{text}");
    }
    let audit = help(&["audit", "--help"]);
    for needle in [
        "--since", "--until", "--key", "--actor", "--action", "--limit", "local",
    ] {
        assert!(
            audit.contains(needle),
            "audit --help lacks {needle}:\n{audit}"
        );
    }
    let init = help(&["init", "--help"]);
    for needle in ["KEYWARD_DATABASE_URL", "sqlite://keyward.db"] {
        assert!(init.contains(needle), "init --help lacks {needle}:\n{init}");
    }
    let verify = help(&["verify", "--help"]);
    assert!(verify.contains("stdin"), "{verify}");
    assert!(verify.contains("--client-ip"), "{verify}");
}
