//! Wiring: builds the store, the group-commit writer, the workers and the HTTP server from a
//! [`Config`], and takes them down in order on shutdown.

use crate::api::{self, AppState, Metrics, ServerInfo};
use crate::config::{Config, Durability, PayloadStore};
use crate::store::archive::PayloadArchive;
use crate::store::ingest::Ingest;
use crate::store::ingest::IngestSignals;
use crate::store::{Backend, Store, SyncMode};
use crate::webhook::SignatureVerifier;
use crate::worker::{self, WorkerConfig};
use crate::workflow::engine::Engine;
use anyhow::Context;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Connects to the configured database and applies migrations.
pub async fn open_store(config: &Config) -> anyhow::Result<Store> {
    let sync = match config.durability {
        Durability::Fsync => SyncMode::Full,
        Durability::Os => SyncMode::Normal,
    };
    let store = Store::connect(&config.database_url, sync).await?;
    store.migrate().await?;
    // Every append of this process (and verify) uses the configured chain key.
    crate::audit::set_key(config.audit_key.as_ref());
    Ok(store)
}

/// A running orch: HTTP server, ingest writer and workers.
pub struct Server {
    pub addr: SocketAddr,
    pub store: Store,
    stop: watch::Sender<bool>,
    http: JoinHandle<std::io::Result<()>>,
    writer: JoinHandle<()>,
    workers: Vec<JoinHandle<()>>,
    checkpoints: JoinHandle<()>,
    /// Asks GitHub to redeliver missed deliveries (only with a GitHub App configured).
    reconcile: Option<JoinHandle<()>>,
}

impl Server {
    pub async fn start(config: &Config) -> anyhow::Result<Server> {
        config.require_serve()?;
        // A configured App must have a usable key: a bad one is a start-up error, not a
        // failure at the first GitHub write.
        let credentials =
            if config.github_app_id.is_some() || config.github_private_key_path.is_some() || config.github_private_key.is_some() {
                Some(crate::github::auth::AppCredentials::from_config(config)?)
            } else {
                None
            };
        let store = open_store(config).await?;
        let engine = match credentials {
            Some(credentials) => {
                let marker_key = marker_key(config, &store).await?;
                Some(Arc::new(engine(config, store.clone(), credentials, marker_key)?))
            }
            None => None,
        };
        if engine.is_none() {
            tracing::warn!("no GitHub App configured (ORCH_GITHUB_APP_ID and a private key): deliveries are stored, nothing acts on them");
        }
        // SQLite serves one instance, so its raw bodies go to the local archive by default; on
        // Postgres they stay in the shared database by default, where every replica reads them.
        let payload_store = config.payload_store.unwrap_or(match store.backend() {
            Backend::Sqlite => PayloadStore::Archive,
            Backend::Postgres => PayloadStore::Database,
        });
        let archive = match payload_store {
            PayloadStore::Archive => Some(Arc::new(PayloadArchive::open(
                &config.payload_dir,
                config.durability == Durability::Fsync,
            )?)),
            PayloadStore::Database => None,
        };
        let signals = Arc::new(IngestSignals::default());
        let (ingest, writer) = Ingest::start(store.clone(), archive, signals.clone()).await?;
        let (stop, stop_rx) = watch::channel(false);

        let state = AppState {
            store: store.clone(),
            ingest,
            verifier: Arc::new(SignatureVerifier::new(&config.webhook_secrets)),
            metrics: Arc::new(Metrics::default()),
            info: Arc::new(ServerInfo {
                version: VERSION,
                max_phase: config.max_phase,
                dry_run: config.github_dry_run,
            }),
            engine: engine.clone(),
            operators: Arc::new(config.operators.clone()),
        };
        let listener = tokio::net::TcpListener::bind(config.bind)
            .await
            .with_context(|| format!("ORCH_BIND: cannot listen on {}", config.bind))?;
        let addr = listener.local_addr()?;
        let edge = Arc::new(crate::webhook::edge::WebhookEdge::new(
            config.webhook_max_in_flight,
            config.webhook_body_timeout,
        ));
        let app = api::router(state).layer(axum::middleware::from_fn_with_state(edge, crate::webhook::edge::guard));
        let mut http_stop = stop_rx.clone();
        let http = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = http_stop.wait_for(|s| *s).await;
                })
                .await
        });
        let reconcile = match &engine {
            Some(engine) if !config.reconcile_every.is_zero() => Some(tokio::spawn(crate::github::redeliver::reconcile_loop(
                engine.github.clone(),
                store.clone(),
                config.reconcile_every,
                stop_rx.clone(),
            ))),
            _ => None,
        };
        let workers = worker::spawn(
            store.clone(),
            engine,
            WorkerConfig::new(config.job_lease, config.workers),
            signals,
            stop_rx.clone(),
        );
        let checkpoints = tokio::spawn(store.clone().checkpoint_loop(stop_rx));
        tracing::info!(%addr, store = store.backend().name(), "orch is listening");
        Ok(Server {
            addr,
            store,
            stop,
            http,
            writer,
            workers,
            checkpoints,
            reconcile,
        })
    }

    /// Stops accepting, lets in-flight requests finish (their deliveries are committed before
    /// they are answered), lets workers finish their current job, then closes the store.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.http.await.context("HTTP server task")?.context("HTTP server")?;
        // The router (and with it the last handle on the writer) is gone: the writer commits
        // what it holds and ends.
        self.writer.await.context("ingest writer task")?;
        for w in self.workers {
            w.await.context("worker task")?;
        }
        self.checkpoints.await.context("checkpoint task")?;
        if let Some(reconcile) = self.reconcile {
            reconcile.await.context("missed-delivery task")?;
        }
        self.store.close().await;
        tracing::info!("orch stopped");
        Ok(())
    }
}

/// The workflow engine over a GitHub client for the configured App. octocrab is not used: one
/// retry layer (ours) and a small reqwest client cover the operations orch needs.
/// The key of orch's markers: `ORCH_MARKER_KEY`, else the one kept in the database (generated by
/// the first replica that starts), so that every replica tags and checks alike.
async fn marker_key(config: &Config, store: &Store) -> anyhow::Result<crate::github::marks::MarkerKey> {
    use crate::github::marks::MarkerKey;
    if let Some(key) = &config.marker_key {
        return Ok(MarkerKey::new(key.clone()));
    }
    let _write = store.write_guard().await;
    let text = crate::store::server_keys::get_or_create(store.pool(), "marker", &MarkerKey::generate_text(), crate::store::now_ms())
        .await
        .context("the marker key in the database")?;
    // On disk before any comment carries a tag made with it.
    store.sync().await?;
    Ok(MarkerKey::new(secrecy::SecretString::from(text)))
}

fn engine(
    config: &Config,
    store: Store,
    credentials: crate::github::auth::AppCredentials,
    marker_key: crate::github::marks::MarkerKey,
) -> anyhow::Result<Engine> {
    use crate::github::{auth::TokenCache, client::GithubClient, retry::RetryPolicy};
    let http = reqwest::Client::builder()
        .user_agent(concat!("orch/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("TLS backend");
    let policy = RetryPolicy {
        request_timeout: config.github_request_timeout,
        base_backoff: config.github_retry_backoff,
        max_rate_limit_wait: config.github_max_rate_limit_wait,
        ..RetryPolicy::default()
    };
    let tokens = Arc::new(TokenCache::new(credentials, &config.github_api_url, http.clone(), policy.clone()));
    let github = GithubClient::new(http, &config.github_api_url, tokens, policy)
        .with_dry_run(config.github_dry_run)
        .with_pace(config.github_write_pace)
        .with_budget(store.clone(), config.github_write_limits.clone())
        .with_permission_ttl(config.permission_cache)
        .with_marker_key(marker_key);
    Ok(Engine {
        store,
        github,
        llm: crate::llm::Llm::from_config(config)?,
        bot_login: config.bot_login.clone(),
        reaction_poll: config.reaction_poll,
        tarball_limits: crate::github::tarball::TarballLimits {
            max_download_bytes: config.tarball_max_bytes,
            ..Default::default()
        },
        caps: config.policy_caps.clone(),
        compiled: Default::default(),
        public_url: config.public_url.clone(),
        proposal_day: config.proposal_day,
    })
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// `orch serve`: runs until SIGTERM/SIGINT, then shuts down gracefully.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let server = Server::start(&config).await?;
    shutdown_signal().await;
    tracing::info!("shutdown requested; finishing in-flight work");
    server.shutdown().await
}
