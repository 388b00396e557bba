//! `keywardctl role ...`: roles are named sets of permissions. A key holds
//! roles, so changing a role changes, from the next validation on, what every
//! key holding it may do; that is how many keys alike are managed at once.
//!
//! The server enforces the rules (no escalation beyond the admin key's own
//! permissions unless it holds `keyward:admin`, built-in roles are fixed, a
//! role still held by a key cannot be deleted); these verbs pass the request
//! on and show the result.

use std::{process::ExitCode, time::Duration};

use clap::{ArgGroup, Args, Subcommand};
use keyward::{pb, rate_limit::RateLimit};

use crate::{
    cli::{GlobalArgs, parse_burst, parse_positive_duration, parse_rate},
    client::{AdminClient, admin_client},
    commands::{call, proto_duration, rate_limit_request},
    error::CliError,
    output::{
        self, OutputFormat,
        role::{DeletedRoleView, RoleView, role_fields, roles_table},
    },
};

/// The `role` verbs.
#[derive(Debug, Subcommand)]
pub enum RoleCommand {
    /// Create a role with its permissions
    ///
    /// Keys get its permissions (and its default rate limit, unless they have
    /// their own) once minted with `--role NAME`. An admin key
    /// without `keyward:admin` can put into a role only permissions it holds
    /// itself.
    Create(CreateArgs),
    /// List every role, by name
    List,
    /// Show one role: its permissions, max TTL, default rate limit and history
    Show(ShowArgs),
    /// Change a role's permissions, description, max TTL or default rate limit
    ///
    /// The change applies to every key holding the role from its very next
    /// validation. Give at least one change. The built-in roles cannot be
    /// changed.
    Update(UpdateArgs),
    /// Delete a role that no key holds
    ///
    /// Refused while any key holds the role; the error says how many do. The
    /// built-in roles cannot be deleted.
    Delete(DeleteArgs),
}

/// Arguments of `role create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The role's name, `[a-z0-9][a-z0-9_.-]{0,63}`, e.g. `deployer`
    pub name: String,

    /// A permission the role grants, e.g. `deploy:write` or `deploy:*`
    /// (repeatable; at least one)
    #[arg(long = "permission", value_name = "PERMISSION", required = true)]
    pub permissions: Vec<String>,

    /// What the role is for
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,

    /// Longest lifetime a key holding this role may be minted with, e.g.
    /// `1h` for CI keys that must not outlive a job [default: no cap]
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration)]
    pub max_ttl: Option<Duration>,

    /// Default rate limit of keys holding this role that have none of their
    /// own, `N/s`, `N/m` or `N/h` (N calls per second, minute or hour), e.g.
    /// `10/s`; a key with several such roles gets the strictest [default:
    /// none, the server's --default-rate applies]. Each keyward server
    /// (replica) counts on its own: behind 3 replicas a key may get up to 3
    /// times this. The limit applies only after a key is proven (live, right
    /// secret), so invalid traffic cannot spend its quota
    // `allow_hyphen_values`: `--rate -1/s` reaches the parser and gets its
    // message, instead of reading as an unknown flag `-1`.
    #[arg(long, value_name = "RATE", value_parser = parse_rate, allow_hyphen_values = true)]
    pub rate: Option<RateLimit>,

    /// With --rate: the most calls a key may make at once (after a quiet
    /// spell) before the rate paces it, e.g. `20` [default: N, the rate's
    /// count]
    #[arg(long, value_name = "B", value_parser = parse_burst, requires = "rate", allow_hyphen_values = true)]
    pub burst: Option<u32>,
}

/// Arguments of `role show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The role's name
    pub name: String,
}

/// Arguments of `role update`. A run that changes nothing is a usage error:
/// it is almost always a forgotten flag.
#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("change")
        .required(true)
        .multiple(true)
        .args([
            "add_permissions",
            "remove_permissions",
            "description",
            "max_ttl",
            "clear_max_ttl",
            "rate",
            "clear_rate",
        ])
))]
pub struct UpdateArgs {
    /// The role's name
    pub name: String,

    /// Grant this permission too (repeatable)
    #[arg(long = "add-permission", value_name = "PERMISSION")]
    pub add_permissions: Vec<String>,

    /// Stop granting this permission (repeatable)
    #[arg(long = "remove-permission", value_name = "PERMISSION")]
    pub remove_permissions: Vec<String>,

    /// The new description (`""` clears it)
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,

    /// The new max TTL of keys minted with the role; keys minted before keep
    /// their expiry
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration, conflicts_with = "clear_max_ttl")]
    pub max_ttl: Option<Duration>,

    /// Remove the max TTL: keys with the role may live as long as minted
    #[arg(long)]
    pub clear_max_ttl: bool,

    /// The role's new default rate limit, for keys holding it that have none
    /// of their own, `N/s`, `N/m` or `N/h` (N calls per second, minute or
    /// hour), e.g. `10/s`; a key with several such roles gets the strictest.
    /// Each keyward server (replica) counts on its own: behind 3 replicas a
    /// key may get up to 3 times this. The limit applies only after a key is
    /// proven (live, right secret), so invalid traffic cannot spend its quota
    #[arg(long, value_name = "RATE", value_parser = parse_rate, allow_hyphen_values = true, conflicts_with = "clear_rate")]
    pub rate: Option<RateLimit>,

    /// With --rate: the most calls a key may make at once (after a quiet
    /// spell) before the rate paces it, e.g. `20` [default: N, the rate's
    /// count]
    #[arg(long, value_name = "B", value_parser = parse_burst, requires = "rate", conflicts_with = "clear_rate", allow_hyphen_values = true)]
    pub burst: Option<u32>,

    /// Remove the role's default rate limit: its keys fall back to their
    /// other roles' defaults, else the server's --default-rate
    #[arg(long)]
    pub clear_rate: bool,
}

/// Arguments of `role delete`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// The role's name
    pub name: String,
}

/// Runs a `role` verb.
///
/// # Errors
/// No admin key, an unreachable server, or the server refusing: an unknown
/// role (`NOT_FOUND`), a malformed name or permission (`INVALID_ARGUMENT`), a
/// name taken (`ALREADY_EXISTS`), a built-in role or one still held by keys
/// (`FAILED_PRECONDITION`), or a permission the admin key lacks.
pub async fn run(command: RoleCommand, global: &GlobalArgs) -> Result<ExitCode, CliError> {
    let mut client = admin_client(global).await?;
    match command {
        RoleCommand::Create(args) => create(&mut client, args, global).await,
        RoleCommand::List => list(&mut client, global).await,
        RoleCommand::Show(args) => {
            let role = call(
                client.get_role(pb::GetRoleRequest { name: args.name }),
                global,
            )
            .await?;
            print_role(None, &role, global)
        }
        RoleCommand::Update(args) => update(&mut client, args, global).await,
        RoleCommand::Delete(args) => {
            call(
                client.delete_role(pb::DeleteRoleRequest {
                    name: args.name.clone(),
                }),
                global,
            )
            .await?;
            match global.output {
                OutputFormat::Json => {
                    output::print_json(&DeletedRoleView {
                        name: &args.name,
                        deleted: true,
                    })?;
                }
                OutputFormat::Table => output::print(&format!("Deleted role {}.\n", args.name))?,
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn create(
    client: &mut AdminClient,
    args: CreateArgs,
    global: &GlobalArgs,
) -> Result<ExitCode, CliError> {
    let request = pb::CreateRoleRequest {
        name: args.name,
        description: args.description.unwrap_or_default(),
        permissions: args.permissions,
        max_ttl: args
            .max_ttl
            .map(|ttl| proto_duration(ttl, "--max-ttl"))
            .transpose()?,
        default_rate_limit: rate_limit_request(args.rate, args.burst)?,
    };
    let role = call(client.create_role(request), global).await?;
    print_role(Some("Created"), &role, global)
}

async fn update(
    client: &mut AdminClient,
    args: UpdateArgs,
    global: &GlobalArgs,
) -> Result<ExitCode, CliError> {
    let request = pb::UpdateRoleRequest {
        name: args.name,
        add_permissions: args.add_permissions,
        remove_permissions: args.remove_permissions,
        description: args.description,
        max_ttl: args
            .max_ttl
            .map(|ttl| proto_duration(ttl, "--max-ttl"))
            .transpose()?,
        clear_max_ttl: args.clear_max_ttl,
        default_rate_limit: rate_limit_request(args.rate, args.burst)?,
        clear_default_rate_limit: args.clear_rate,
    };
    let role = call(client.update_role(request), global).await?;
    print_role(Some("Updated"), &role, global)
}

async fn list(client: &mut AdminClient, global: &GlobalArgs) -> Result<ExitCode, CliError> {
    let roles = call(client.list_roles(pb::ListRolesRequest {}), global)
        .await?
        .roles;
    match global.output {
        OutputFormat::Json => {
            output::print_json(&roles.iter().map(RoleView::from).collect::<Vec<_>>())?;
        }
        OutputFormat::Table if roles.is_empty() => output::print("No roles.\n")?,
        OutputFormat::Table => output::print(&roles_table(&roles))?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints a role; in a table after a line saying what was `done` to it.
fn print_role(
    done: Option<&str>,
    role: &pb::Role,
    global: &GlobalArgs,
) -> Result<ExitCode, CliError> {
    match global.output {
        OutputFormat::Json => output::print_json(&RoleView::from(role))?,
        OutputFormat::Table => {
            let fields = output::fields_text(&role_fields(role));
            output::print(&match done {
                Some(done) => format!("{done} role {}.\n\n{fields}", role.name),
                None => fields,
            })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
