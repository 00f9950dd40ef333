//! A private PostgreSQL server for one test: its own data directory, unix socket directory and
//! TCP port, trust authentication, run as the `postgres` OS user when the test runs as root (the
//! server refuses root), else as the current user.
//! A test may stop and start it at will without touching the shared server on port 5432.
//!
//! [`PrivatePg::start`] returns None when the machine cannot run one (no binaries, no
//! `postgres` user) outside CI; with `CI=true` it panics instead, so CI never skips silently.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct PrivatePg {
    bin: PathBuf,
    /// Owned by the `postgres` user: `data/`, the socket and `log`.
    dir: tempfile::TempDir,
    pub port: u16,
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// `/usr/lib/postgresql/<newest>/bin`, if any.
fn find_bin() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("pg_ctl").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn running_as_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout == b"0\n").unwrap_or(false)
}

/// Runs `program args` as the `postgres` user when running as root (the server refuses root),
/// else as the current user; returns (success, stdout + stderr).
fn as_postgres(program: &Path, args: &[&str]) -> (bool, String) {
    let output = if running_as_root() {
        Command::new("runuser")
            .arg("-u")
            .arg("postgres")
            .arg("--")
            .arg(program)
            .args(args)
            .output()
    } else {
        Command::new(program).args(args).output()
    };
    match output {
        Ok(o) => (
            o.status.success(),
            format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)),
        ),
        Err(e) => (false, format!("cannot run {}: {e}", program.display())),
    }
}

impl PrivatePg {
    /// initdb and start a fresh server; None (outside CI) when that is impossible here.
    pub fn start() -> Option<PrivatePg> {
        match Self::try_start() {
            Ok(pg) => Some(pg),
            Err(why) if in_ci() => panic!("a private PostgreSQL server cannot be started in CI: {why}"),
            Err(why) => {
                eprintln!("SKIPPED: a private PostgreSQL server cannot be started: {why}");
                None
            }
        }
    }

    fn try_start() -> Result<PrivatePg, String> {
        let bin = find_bin().ok_or("no PostgreSQL binaries under /usr/lib/postgresql/*/bin")?;
        let dir = tempfile::Builder::new()
            .prefix("orch-private-pg")
            .tempdir()
            .map_err(|e| format!("temporary directory: {e}"))?;
        // As root, the server runs as `postgres`: it must own its directory. Otherwise it runs
        // as the current user, who owns it already.
        if running_as_root() {
            let chown = Command::new("chown")
                .arg("postgres:")
                .arg(dir.path())
                .output()
                .map_err(|e| format!("chown: {e}"))?;
            if !chown.status.success() {
                return Err(format!("chown postgres: {}", String::from_utf8_lossy(&chown.stderr)));
            }
        }
        let data = dir.path().join("data");
        let (ok, out) = as_postgres(
            &bin.join("initdb"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        if !ok {
            return Err(format!("initdb failed: {out}"));
        }
        let pg = PrivatePg {
            bin,
            dir,
            port: free_port(),
        };
        pg.start_server()?;
        Ok(pg)
    }

    fn start_server(&self) -> Result<(), String> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=60",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log");
        let (ok, out) = as_postgres(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                self.data().to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-t",
                "30",
                "-o",
                &options,
                "start",
            ],
        );
        if ok {
            Ok(())
        } else {
            Err(format!(
                "pg_ctl start failed: {out}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            ))
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `postgres://postgres@127.0.0.1:<port>/<db>`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates database `name`.
    pub async fn create_database(&self, name: &str) {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&self.url("postgres"))
            .await
            .expect("the private server accepts connections");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("CREATE DATABASE");
    }

    /// Stops the server. `immediate`: as a crash would (no checkpoint, recovery at the next
    /// start); otherwise a fast shutdown (sessions are cut, a checkpoint is written).
    pub fn stop(&self, immediate: bool) {
        let (ok, out) = as_postgres(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                self.data().to_str().unwrap(),
                "-w",
                "-m",
                if immediate { "immediate" } else { "fast" },
                "stop",
            ],
        );
        assert!(ok, "pg_ctl stop failed: {out}");
    }

    /// Starts the stopped server again on the same port and data.
    pub fn restart(&self) {
        self.start_server().unwrap_or_else(|e| panic!("{e}"));
    }

    /// Whether the server answers on its port right now.
    pub async fn is_up(&self) -> bool {
        use sqlx::Connection;
        sqlx::PgConnection::connect(&self.url("postgres")).await.is_ok()
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        // Whatever state it is in: an already stopped server makes pg_ctl fail, which is fine.
        let _ = as_postgres(
            &self.bin.join("pg_ctl"),
            &["-D", self.data().to_str().unwrap(), "-w", "-m", "immediate", "stop"],
        );
    }
}
