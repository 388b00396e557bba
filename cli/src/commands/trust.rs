//! `keywardctl trust ...`: trust policies say which CI jobs may exchange
//! their OIDC identity token (`keywardctl exchange`) for which short-lived
//! key. The server checks everything (an https:// issuer, at least one
//! required claim, a TTL of at most an hour within the roles' caps, no
//! grant beyond the admin key's own); these verbs pass the request on and
//! show the result.

use std::{collections::HashMap, process::ExitCode, time::Duration};

use clap::{ArgGroup, Args, Subcommand};
use keyward::pb;

use super::keys::label_map;
use crate::{
    cli::{GlobalArgs, parse_label, parse_positive_duration},
    client::{TrustClient, trust_client},
    commands::{call, proto_duration},
    error::CliError,
    output::{
        self, OutputFormat,
        trust::{DeletedPolicyView, TrustPolicyView, policies_table, policy_fields},
    },
};

/// The `trust` verbs.
#[derive(Debug, Subcommand)]
pub enum TrustCommand {
    /// Create a trust policy: which identity tokens may be exchanged for
    /// which key
    ///
    /// A token is accepted when it is signed by the issuer (keys found by
    /// OpenID discovery), carries the audience, and every --claim matches
    /// (exactly, or as a prefix when the value ends in `*`). The key it gets
    /// holds the roles and permissions given, for the TTL. An admin key
    /// without `keyward:admin` can grant only what it holds itself.
    Create(CreateArgs),
    /// List every trust policy, by name
    List,
    /// Show one trust policy
    Show(NameArgs),
    /// Change a trust policy: each setting given replaces the policy's
    ///
    /// A list flag (--claim, --role, --permission, --allow-cidr, --label)
    /// replaces that whole list. Keys already minted are not changed.
    Update(UpdateArgs),
    /// Delete a trust policy; keys it minted live on until they expire
    Delete(NameArgs),
}

/// The settings of a policy, as flags.
#[derive(Debug, Args)]
pub struct SpecArgs {
    /// The issuer URL, exactly as in the tokens' `iss`, e.g.
    /// `https://token.actions.githubusercontent.com` or
    /// `https://gitlab.com`
    #[arg(long, value_name = "URL")]
    pub issuer: Option<String>,

    /// What the tokens' `aud` must contain, e.g. `keyward` (GitHub:
    /// `core.getIDToken('keyward')`; GitLab: `id_tokens: X: aud: keyward`)
    #[arg(long, value_name = "AUD")]
    pub audience: Option<String>,

    /// A claim the token must carry, e.g. `repository=acme/api`,
    /// `ref=refs/heads/main`, or with a trailing `*` a prefix:
    /// `job_workflow_ref=acme/workflows/.github/workflows/deploy.yml@*`
    /// (repeatable; at least one)
    #[arg(long = "claim", value_name = "K=V", value_parser = parse_label)]
    pub claims: Vec<(String, String)>,

    /// A role the minted key holds (repeatable; each must exist)
    #[arg(long = "role", value_name = "ROLE")]
    pub roles: Vec<String>,

    /// A permission the minted key holds directly (repeatable)
    #[arg(long = "permission", value_name = "PERMISSION")]
    pub permissions: Vec<String>,

    /// The minted key's lifetime, at most 1h and within its roles' max TTL,
    /// e.g. `15m`
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration)]
    pub ttl: Option<Duration>,

    /// Only accept the minted key from addresses in this range (repeatable)
    #[arg(long = "allow-cidr", value_name = "CIDR")]
    pub allowed_cidrs: Vec<String>,

    /// A label the minted key gets, besides `oidc.*` (repeatable)
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,

    /// What the policy is for
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
}

/// Arguments of `trust create`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("issuer_given").required(true).args(["issuer"])))]
#[command(group(ArgGroup::new("audience_given").required(true).args(["audience"])))]
#[command(group(ArgGroup::new("ttl_given").required(true).args(["ttl"])))]
pub struct CreateArgs {
    /// The policy's name, `[a-z0-9][a-z0-9_.-]{0,63}`, e.g. `deploy-api`
    pub name: String,

    #[command(flatten)]
    pub spec: SpecArgs,
}

/// Arguments of `trust update`. A run that changes nothing is a usage error.
#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("change")
        .required(true)
        .multiple(true)
        .args(["issuer", "audience", "claims", "roles", "permissions", "ttl", "allowed_cidrs",
               "labels", "description", "clear_roles", "clear_permissions", "clear_allowed_cidrs"])
))]
pub struct UpdateArgs {
    /// The policy's name
    pub name: String,

    #[command(flatten)]
    pub spec: SpecArgs,

    /// Grant no role any more
    #[arg(long, conflicts_with = "roles")]
    pub clear_roles: bool,

    /// Grant no direct permission any more
    #[arg(long, conflicts_with = "permissions")]
    pub clear_permissions: bool,

    /// Accept the minted key from any address
    #[arg(long, conflicts_with = "allowed_cidrs")]
    pub clear_allowed_cidrs: bool,
}

/// A policy's name.
#[derive(Debug, Args)]
pub struct NameArgs {
    /// The policy's name
    pub name: String,
}

/// Runs a `trust` verb.
///
/// # Errors
/// No admin key, an unreachable server, or the server refusing (an invalid
/// setting names its field).
pub async fn run(command: TrustCommand, global: &GlobalArgs) -> Result<ExitCode, CliError> {
    let mut client = trust_client(global).await?;
    match command {
        TrustCommand::Create(args) => {
            let mut spec = pb::TrustPolicySpec::default();
            apply(&mut spec, args.spec)?;
            let request = pb::CreateTrustPolicyRequest {
                name: args.name,
                spec: Some(spec),
            };
            let policy = call(client.create_trust_policy(request), global).await?;
            print_policy(Some("Created"), &policy, global)
        }
        TrustCommand::List => {
            let list = call(
                client.list_trust_policies(pb::ListTrustPoliciesRequest {}),
                global,
            )
            .await?;
            match global.output {
                OutputFormat::Json => output::print_json(
                    &list
                        .policies
                        .iter()
                        .map(TrustPolicyView::from)
                        .collect::<Vec<_>>(),
                )?,
                OutputFormat::Table => output::print(&policies_table(&list.policies))?,
            }
            Ok(ExitCode::SUCCESS)
        }
        TrustCommand::Show(args) => {
            let policy = get(&mut client, args.name, global).await?;
            print_policy(None, &policy, global)
        }
        TrustCommand::Update(args) => update(&mut client, args, global).await,
        TrustCommand::Delete(args) => {
            let request = pb::DeleteTrustPolicyRequest {
                name: args.name.clone(),
            };
            call(client.delete_trust_policy(request), global).await?;
            match global.output {
                OutputFormat::Json => output::print_json(&DeletedPolicyView {
                    name: &args.name,
                    deleted: true,
                })?,
                OutputFormat::Table => {
                    output::print(&format!("Deleted trust policy {}.\n", args.name))?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn get(
    client: &mut TrustClient,
    name: String,
    global: &GlobalArgs,
) -> Result<pb::TrustPolicy, CliError> {
    call(
        client.get_trust_policy(pb::GetTrustPolicyRequest { name }),
        global,
    )
    .await
}

/// Reads the policy, changes what the flags give, and sends it whole (the
/// RPC replaces every setting).
async fn update(
    client: &mut TrustClient,
    args: UpdateArgs,
    global: &GlobalArgs,
) -> Result<ExitCode, CliError> {
    let current = get(client, args.name.clone(), global).await?;
    let mut spec = current
        .spec
        .ok_or(CliError::IncompleteResponse("no policy settings"))?;
    if args.clear_roles {
        spec.roles.clear();
    }
    if args.clear_permissions {
        spec.permissions.clear();
    }
    if args.clear_allowed_cidrs {
        spec.allowed_cidrs.clear();
    }
    apply(&mut spec, args.spec)?;
    let request = pb::UpdateTrustPolicyRequest {
        name: args.name,
        spec: Some(spec),
    };
    let policy = call(client.update_trust_policy(request), global).await?;
    print_policy(Some("Updated"), &policy, global)
}

/// Writes the settings the flags give over `spec`; a list flag replaces
/// the whole list.
fn apply(spec: &mut pb::TrustPolicySpec, args: SpecArgs) -> Result<(), CliError> {
    if let Some(issuer) = args.issuer {
        spec.issuer = issuer;
    }
    if let Some(audience) = args.audience {
        spec.audience = audience;
    }
    if !args.claims.is_empty() {
        spec.required_claims = claim_map(args.claims)?;
    }
    if !args.roles.is_empty() {
        spec.roles = args.roles;
    }
    if !args.permissions.is_empty() {
        spec.permissions = args.permissions;
    }
    if let Some(ttl) = args.ttl {
        spec.ttl = Some(proto_duration(ttl, "--ttl")?);
    }
    if !args.allowed_cidrs.is_empty() {
        spec.allowed_cidrs = args.allowed_cidrs;
    }
    if !args.labels.is_empty() {
        spec.labels = label_map(args.labels)?;
    }
    if let Some(description) = args.description {
        spec.description = description;
    }
    Ok(())
}

/// Collects `--claim` values; a claim given twice with two values is a
/// usage error (a token's claim has one value).
fn claim_map(claims: Vec<(String, String)>) -> Result<HashMap<String, String>, CliError> {
    label_map(claims)
        .map_err(|error| CliError::Usage(error.to_string().replace("--label", "--claim")))
}

fn print_policy(
    verb: Option<&str>,
    policy: &pb::TrustPolicy,
    global: &GlobalArgs,
) -> Result<ExitCode, CliError> {
    match global.output {
        OutputFormat::Json => output::print_json(&TrustPolicyView::from(policy))?,
        OutputFormat::Table => {
            let heading = verb.map_or_else(String::new, |verb| {
                format!("{verb} trust policy {}.\n\n", policy.name)
            });
            output::print(&format!(
                "{heading}{}",
                output::fields_text(&policy_fields(policy))
            ))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
