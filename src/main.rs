use clap::{Parser, Subcommand};
use orch::config::Config;
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
}

/// `default` applies when RUST_LOG is not set (the demo keeps its own output readable).
fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_target(false).init();
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(if matches!(cli.command, Command::Demo { .. }) {
        "warn"
    } else {
        "info"
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
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("orch: {e:#}");
            ExitCode::FAILURE
        }
    }
}
