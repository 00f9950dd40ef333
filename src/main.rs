use clap::{Parser, Subcommand};
use orch::config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "orch",
    version,
    about = "A GitHub App that lets a language model propose work under policy and approval"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve webhooks, the API and the workers until SIGTERM/SIGINT.
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Play the bundled scenario on an embedded SQLite database with a generated secret.
    Demo {
        /// Exit after the scenario instead of serving on.
        #[arg(long)]
        once: bool,
    },
    /// Work with the repository policy (`.github/orch.yml`).
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// The circuit breaker, kept in the database (ORCH_DATABASE_URL).
    Circuit {
        #[command(subcommand)]
        command: CircuitCommand,
    },
    /// The audit log (ORCH_DATABASE_URL): verify its hash chain, export it.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Check the configuration, database, audit chain, GitHub App key and reachability, model key
    /// and webhook secret; one line each (ok, FAIL, or skip when not configured); exit 1 on a FAIL.
    Doctor,
    /// Send a webhook payload, signed with ORCH_WEBHOOK_SECRET (the last one listed), to a running
    /// orch and print its answer; exit 1 unless it answers 2xx.
    Replay {
        /// The JSON body of the delivery (e.g. saved from the App's "Recent Deliveries").
        payload: PathBuf,
        /// The `X-GitHub-Event` header, e.g. `issues` or `issue_comment`.
        #[arg(long)]
        event: String,
        /// The `X-GitHub-Delivery` GUID (default: a fresh `replay-…` one; reuse a GUID to see
        /// that orch acknowledges a redelivery without processing it twice).
        #[arg(long)]
        guid: Option<String>,
        /// Where orch listens (default: http://<ORCH_BIND>/webhook; `/webhook` is added to a base URL).
        #[arg(long)]
        url: Option<String>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Recompute the hash chain (keyed with ORCH_AUDIT_KEY when set); exit 1 naming the first
    /// broken seq.
    Verify {
        /// An anchor printed earlier by `orch audit anchor` (SEQ:HASH): also proves that row SEQ
        /// still has that hash, so nothing up to it was rewritten or cut off.
        #[arg(long, value_name = "SEQ:HASH")]
        anchor: Option<orch::audit::Anchor>,
    },
    /// Verify the chain and print its head as SEQ:HASH, to keep outside the database and pass to
    /// `verify --anchor` later.
    Anchor,
    /// Write every row as JSON lines, in seq order (to stdout without --out).
    Export {
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum CircuitCommand {
    /// Print the breaker's state.
    Status,
    /// Close the breaker and count afresh (spending totals are kept).
    Reset,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate a policy file; with --patch, print Gate 2's verdict on a patch (exit 0 pass, 1 blocked, 2 invalid).
    Check {
        /// The policy file (default: .github/orch.yml in the current directory).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// A unified diff or the patch JSON of SPEC §9.
        #[arg(long, value_name = "FILE")]
        patch: Option<PathBuf>,
        /// Where the patch's files are on its base, for `edit`s and line counts (default: the
        /// current directory, the repository's checkout).
        #[arg(long, value_name = "DIR", requires = "patch")]
        base: Option<PathBuf>,
    },
}

async fn circuit(config: &Config, command: CircuitCommand) -> anyhow::Result<()> {
    use orch::workflow::guard;
    let store = orch::app::open_store(config).await?;
    if matches!(command, CircuitCommand::Reset) {
        orch::workflow::service::Service::reset_breaker(&store, "operator:cli", "cli").await?;
        println!("circuit breaker closed");
    }
    let b = guard::breaker(store.pool()).await?;
    println!(
        "circuit breaker {}: {} failed of {} model tasks since the last reset, ${:.4} spent in all",
        if b.is_open { "OPEN" } else { "closed" },
        b.failed_tasks,
        b.total_tasks,
        b.total_cost_usd
    );
    store.close().await;
    Ok(())
}

async fn audit(config: &Config, command: AuditCommand) -> anyhow::Result<()> {
    use anyhow::Context;
    let store = orch::app::open_store(config).await?;
    let result = match command {
        AuditCommand::Verify { anchor } => match orch::audit::verify_with(
            store.pool(),
            config
                .audit_key
                .as_ref()
                .map(|k| secrecy::ExposeSecret::expose_secret(k).as_bytes()),
            anchor.as_ref(),
        )
        .await?
        {
            verdict @ orch::audit::Verdict::Intact { .. } => {
                match anchor {
                    Some(a) => println!("audit log {verdict}; anchor {a} matches"),
                    None => println!("audit log {verdict}"),
                }
                Ok(())
            }
            orch::audit::Verdict::Broken { seq, problem } => {
                println!("audit log broken at seq {seq}: {problem}");
                Err(anyhow::anyhow!("the audit chain is broken at seq {seq}"))
            }
        },
        AuditCommand::Anchor => orch::audit::anchor(store.pool()).await.map(|a| println!("{a}")),
        AuditCommand::Export { out: Some(path) } => {
            let file = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
            let rows = orch::audit::export_jsonl(store.pool(), &mut std::io::BufWriter::new(file)).await?;
            eprintln!("{rows} audit rows written to {}", path.display());
            Ok(())
        }
        AuditCommand::Export { out: None } => orch::audit::export_jsonl(store.pool(), &mut std::io::stdout().lock())
            .await
            .map(|_| ()),
    };
    store.close().await;
    result
}

/// One line of `orch doctor`.
fn report_line(ok: Option<bool>, what: &str, detail: &str) {
    let mark = match ok {
        Some(true) => "ok  ",
        Some(false) => "FAIL",
        None => "skip",
    };
    println!("{mark}  {what}: {detail}");
}

/// The file of a `sqlite:` URL (None for an in-memory database).
fn sqlite_path(url: &str) -> Option<PathBuf> {
    let rest = url.strip_prefix("sqlite:")?.trim_start_matches("//");
    let path = rest.split('?').next().unwrap_or(rest);
    (!path.is_empty() && !path.contains(":memory:")).then(|| PathBuf::from(path))
}

/// `orch doctor`: every check prints one line; returns whether none failed. Nothing is changed:
/// the database is not migrated and a missing SQLite file is not created.
async fn doctor() -> bool {
    use orch::config::LlmProvider;
    use secrecy::ExposeSecret;
    let config = match Config::from_env() {
        Ok(c) => {
            report_line(
                Some(true),
                "configuration",
                &format!("loaded ({} database, bind {})", c.mode(), c.bind),
            );
            c
        }
        Err(e) => {
            report_line(Some(false), "configuration", &e.to_string());
            return false;
        }
    };
    let mut healthy = true;
    let mut check = |ok: Option<bool>, what: &str, detail: &str| {
        healthy &= ok != Some(false);
        report_line(ok, what, detail);
    };

    match config.require_serve() {
        Ok(()) => check(
            Some(true),
            "webhook secret",
            &format!("{} secret(s) in ORCH_WEBHOOK_SECRET", config.webhook_secrets.len()),
        ),
        Err(e) => check(Some(false), "webhook secret", &e.to_string()),
    }

    // The audit chain check below verifies keyed links when ORCH_AUDIT_KEY is set.
    orch::audit::set_key(config.audit_key.as_ref());
    let missing_file = sqlite_path(&config.database_url).filter(|p| !p.exists());
    let store = match missing_file {
        Some(p) => {
            check(
                Some(false),
                "database",
                &format!("the SQLite file {} does not exist: run `orch migrate`", p.display()),
            );
            None
        }
        None => match orch::store::Store::connect(&config.database_url, orch::store::SyncMode::Normal).await {
            Ok(store) => Some(store),
            Err(e) => {
                check(Some(false), "database", &format!("{e:#}"));
                None
            }
        },
    };
    if let Some(store) = &store {
        let migrator = match store.backend() {
            orch::store::Backend::Sqlite => sqlx::migrate!("./migrations/sqlite"),
            orch::store::Backend::Postgres => sqlx::migrate!("./migrations/postgres"),
        };
        let applied: Result<Vec<i64>, sqlx::Error> = sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success = TRUE")
            .fetch_all(store.pool())
            .await;
        match applied {
            Ok(applied) => {
                let pending: Vec<String> = migrator
                    .iter()
                    .filter(|m| m.migration_type.is_up_migration() && !applied.contains(&m.version))
                    .map(|m| m.version.to_string())
                    .collect();
                if pending.is_empty() {
                    check(
                        Some(true),
                        "database",
                        &format!("reachable ({}), {} migrations applied", store.backend().name(), applied.len()),
                    );
                } else {
                    check(
                        Some(false),
                        "database",
                        &format!(
                            "reachable, but migrations {} are not applied: run `orch migrate`",
                            pending.join(", ")
                        ),
                    );
                }
            }
            Err(_) => check(Some(false), "database", "reachable, but not migrated: run `orch migrate`"),
        }
        match orch::audit::verify(store.pool()).await {
            Ok(v @ orch::audit::Verdict::Intact { .. }) => check(Some(true), "audit chain", &v.to_string()),
            Ok(v) => check(Some(false), "audit chain", &v.to_string()),
            Err(e) => check(Some(false), "audit chain", &format!("cannot be read: {e:#}")),
        }
        store.close().await;
    } else {
        check(Some(false), "audit chain", "not checked: the database is not usable");
    }

    let app_configured = config.github_app_id.is_some() || config.github_private_key_path.is_some() || config.github_private_key.is_some();
    if !app_configured {
        check(
            None,
            "github app",
            "not configured (ORCH_GITHUB_APP_ID and a private key): deliveries are stored, nothing acts on them",
        );
    } else {
        match orch::github::auth::AppCredentials::from_config(&config) {
            Err(e) => check(Some(false), "github app key", &e.to_string()),
            Ok(credentials) => {
                let app_id = credentials.app_id();
                check(Some(true), "github app key", &format!("parses (App {app_id})"));
                use orch::github::{auth::TokenCache, client::GithubClient, retry::RetryPolicy};
                let http = reqwest::Client::builder()
                    .user_agent(concat!("orch/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .expect("TLS backend");
                let policy = RetryPolicy {
                    max_attempts: 2,
                    request_timeout: std::time::Duration::from_secs(10),
                    max_rate_limit_wait: std::time::Duration::from_secs(5),
                    ..RetryPolicy::default()
                };
                let tokens = std::sync::Arc::new(TokenCache::new(credentials, &config.github_api_url, http.clone(), policy.clone()));
                let client = GithubClient::new(http, &config.github_api_url, tokens, policy);
                match client.app_info().await {
                    Ok(app) if app.id == app_id as i64 => check(
                        Some(true),
                        "github",
                        &format!(
                            "{} answered GET /app as {}",
                            config.github_api_url,
                            app.slug.as_deref().unwrap_or(&app.name)
                        ),
                    ),
                    Ok(app) => check(
                        Some(false),
                        "github",
                        &format!("GET /app answered App {}, not ORCH_GITHUB_APP_ID {app_id}", app.id),
                    ),
                    Err(e) => check(
                        Some(false),
                        "github",
                        &format!("GET /app at {} with the App JWT failed: {e}", config.github_api_url),
                    ),
                }
            }
        }
    }

    let key_check = |key: &Option<secrecy::SecretString>, var: &str, provider: &str| match key {
        Some(k) if !k.expose_secret().trim().is_empty() => (Some(true), format!("{provider}: {var} is set")),
        _ => (Some(false), format!("{provider}: {var} is not set (ORCH_LLM_PROVIDER={provider})")),
    };
    let (ok, detail) = match config.llm_provider {
        LlmProvider::Anthropic => key_check(&config.anthropic_api_key, "ANTHROPIC_API_KEY", "anthropic"),
        LlmProvider::OpenAi => key_check(&config.openai_api_key, "OPENAI_API_KEY", "openai"),
        LlmProvider::Fake => match &config.fake_llm_script {
            Some(p) if !p.is_file() => (
                Some(false),
                format!("fake: ORCH_FAKE_LLM_SCRIPT {} is not a readable file", p.display()),
            ),
            _ => (Some(true), "fake: needs no key (not for production)".to_string()),
        },
    };
    check(ok, "model provider", &detail);
    healthy
}

/// `orch replay`: signs `payload` with the last configured webhook secret and posts it.
async fn replay(config: &Config, payload: &std::path::Path, event: &str, guid: Option<String>, url: Option<String>) -> anyhow::Result<()> {
    use anyhow::Context;
    use secrecy::ExposeSecret;
    let body = std::fs::read(payload).with_context(|| format!("cannot read {}", payload.display()))?;
    serde_json::from_slice::<serde_json::Value>(&body).with_context(|| format!("{} is not JSON", payload.display()))?;
    let secret = config.webhook_secrets.last().ok_or_else(|| {
        anyhow::anyhow!("ORCH_WEBHOOK_SECRET is required: replay signs the payload with the secret the running orch accepts")
    })?;
    let url = match url {
        Some(u) if u.trim_end_matches('/').ends_with("/webhook") => u.trim_end_matches('/').to_string(),
        Some(u) => format!("{}/webhook", u.trim_end_matches('/')),
        None => {
            let mut bind = config.bind;
            if bind.ip().is_unspecified() {
                bind.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("http://{bind}/webhook")
        }
    };
    let guid = guid.unwrap_or_else(|| {
        let mut b = [0u8; 8];
        getrandom::getrandom(&mut b).expect("system randomness");
        format!("replay-{}", hex::encode(b))
    });
    let signature = orch::webhook::signature::sign(secret.expose_secret(), &body);
    let response = reqwest::Client::new()
        .post(&url)
        .header("content-type", "application/json")
        .header("x-github-event", event)
        .header("x-github-delivery", &guid)
        .header("x-hub-signature-256", signature)
        .body(body)
        .timeout(std::time::Duration::from_secs(30))
        .send()
        .await
        .with_context(|| format!("cannot reach orch at {url}"))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    println!("delivery {guid} ({event}) to {url}: HTTP {}", status.as_u16());
    println!("{text}");
    if status.is_success() {
        Ok(())
    } else {
        Err(anyhow::anyhow!("orch answered HTTP {}", status.as_u16()))
    }
}

/// `default` applies when RUST_LOG is not set (the demo keeps its own output readable).
fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_target(false).init();
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Policy {
        command: PolicyCommand::Check { config, patch, base },
    } = &cli.command
    {
        let code = orch::policy::cli::check(
            config.as_deref(),
            patch.as_deref(),
            base.as_deref(),
            &mut std::io::stdout(),
            &mut std::io::stderr(),
        );
        return ExitCode::from(code);
    }
    if matches!(cli.command, Command::Doctor) {
        // Its own lines are the output: the retry layer's logs would only repeat them.
        init_logging("error");
        return if doctor().await { ExitCode::SUCCESS } else { ExitCode::FAILURE };
    }
    init_logging(match cli.command {
        Command::Demo { .. } => "warn",
        Command::Replay { .. } => "error",
        _ => "info",
    });
    let result = match cli.command {
        Command::Serve => match Config::from_env() {
            Ok(config) => orch::app::serve(config).await,
            Err(e) => Err(e.into()),
        },
        Command::Migrate => match Config::from_env() {
            Ok(config) => orch::app::open_store(&config).await.map(|store| {
                println!("migrations applied to the {} database", store.backend().name());
            }),
            Err(e) => Err(e.into()),
        },
        Command::Demo { once } => orch::demo::run(once).await,
        Command::Policy { .. } => unreachable!("handled above"),
        Command::Circuit { command } => match Config::from_env() {
            Ok(config) => circuit(&config, command).await,
            Err(e) => Err(e.into()),
        },
        Command::Audit { command } => match Config::from_env() {
            Ok(config) => audit(&config, command).await,
            Err(e) => Err(e.into()),
        },
        Command::Doctor => unreachable!("handled above"),
        Command::Replay { payload, event, guid, url } => match Config::from_env() {
            Ok(config) => replay(&config, &payload, &event, guid, url).await,
            Err(e) => Err(e.into()),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("orch: {e:#}");
            ExitCode::FAILURE
        }
    }
}
