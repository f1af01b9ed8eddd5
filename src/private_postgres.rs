//! `ticketing dev` on a machine where PostgreSQL is installed but not
//! running: a private cluster made from the installed server binaries.
//!
//! The cluster lives in one data directory (by default under the user's
//! data directory, reused on the next run) and is stopped when the value is
//! dropped. It listens on no TCP port at all: its only socket is inside the
//! data directory, which only its owner may enter, so no other local
//! account can log in (the socket trusts whoever reaches it, and TCP logins
//! are refused outright). It takes over only an empty directory or a cluster
//! it made itself. `initdb` refuses to run as root, so as root the cluster
//! is created and run as the unprivileged `postgres` user (or `nobody`).

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

/// What to install when no server binaries are found.
const INSTALL_HINT: &str = "no PostgreSQL server binaries (initdb, pg_ctl) found on PATH, in `pg_config --bindir`, \
     /usr/lib/postgresql/*/bin, /usr/pgsql-*/bin, Homebrew or Postgres.app. Install them \
     (Debian/Ubuntu: `sudo apt install postgresql`; Fedora: `sudo dnf install postgresql-server`; \
     macOS: `brew install postgresql@17`) or set DATABASE_URL to a running server";

/// Why a private cluster could not be made or run.
#[derive(Debug, thiserror::Error)]
pub enum PrivatePostgresError {
    /// No server binaries on this machine.
    #[error("{INSTALL_HINT}")]
    NoServerBinaries,
    /// The data directory could not be prepared.
    #[error("preparing {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A PostgreSQL tool failed.
    #[error("{tool} {action} failed ({status}); see {log}: {stderr}")]
    Tool {
        /// `initdb` or `pg_ctl`.
        tool: &'static str,
        /// What it was asked to do.
        action: &'static str,
        /// Its exit status.
        status: String,
        /// Where the server log is.
        log: String,
        /// Its stderr, trimmed.
        stderr: String,
    },
    /// The directory holds something else than a cluster `dev` made.
    #[error("{path} is not empty and holds no PostgreSQL cluster `ticketing dev` made; it is left alone (set DEV_POSTGRES_DIR to an empty or new directory)")]
    NotOurs {
        /// The directory.
        path: PathBuf,
    },
    /// The socket's path would be longer than PostgreSQL allows.
    #[error("{path} is too long a path for PostgreSQL's socket inside it (at most {MAX_SOCKET_DIR} bytes); set DEV_POSTGRES_DIR to a shorter one")]
    PathTooLong {
        /// The directory.
        path: PathBuf,
    },
    /// A tool could not be run at all.
    #[error("running {tool}: {source}")]
    Spawn {
        /// The tool.
        tool: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Marks a data directory as a cluster `dev` made (and may start again).
const MARKER: &str = "ticketing-dev-cluster";

/// The port number that names the socket file (`.s.PGSQL.5432`); nothing
/// listens on TCP.
const SOCKET_PORT: u16 = 5432;

/// The longest socket directory: a Unix socket path has 107 bytes, and
/// `/.s.PGSQL.5432` takes 14 of them.
const MAX_SOCKET_DIR: usize = 92;

/// A private PostgreSQL cluster; stopped when dropped.
#[derive(Debug)]
pub struct PrivatePostgres {
    bindir: PathBuf,
    data: PathBuf,
    port: u16,
    run_as: Option<String>,
}

impl PrivatePostgres {
    /// Where the cluster lives unless told otherwise: the user's data
    /// directory (`~/.local/share/ticketing/pg` on Linux), or
    /// `/var/lib/ticketing/pg` as root (the unprivileged user that runs the
    /// server must be able to reach it, and root's home is closed to it).
    pub fn default_data_dir() -> PathBuf {
        if is_root() {
            return PathBuf::from("/var/lib/ticketing/pg");
        }
        user_data_dir().join("ticketing").join("pg")
    }

    /// Finds the server binaries, creates the cluster in `data` unless one
    /// is there already, and starts it on a free port (a server left
    /// running on `data` by an earlier run is stopped first).
    pub fn start(data: &Path) -> Result<Self, PrivatePostgresError> {
        let bindir = server_bindir().ok_or(PrivatePostgresError::NoServerBinaries)?;
        let run_as = is_root().then(unprivileged_user);
        let data_err = |source| PrivatePostgresError::DataDir { path: data.to_owned(), source };
        std::fs::create_dir_all(data).map_err(data_err)?;
        let data = data.canonicalize().map_err(data_err)?;
        if data.as_os_str().len() > MAX_SOCKET_DIR {
            return Err(PrivatePostgresError::PathTooLong { path: data });
        }
        let fresh = std::fs::read_dir(&data).map_err(data_err)?.next().is_none();
        if !fresh && !data.join(MARKER).exists() {
            return Err(PrivatePostgresError::NotOurs { path: data });
        }
        let pg = Self { bindir, data, port: SOCKET_PORT, run_as };
        if let Some(user) = &pg.run_as {
            let owner = format!("{user}:");
            let chown = Command::new("chown").args(["-R", &owner]).arg(&pg.data).output();
            check("chown", "giving the data directory to the server's user", chown, &pg.log())?;
        }
        if !pg.data.join("PG_VERSION").exists() {
            tracing::info!(data = %pg.data.display(), bindir = %pg.bindir.display(), "creating a private PostgreSQL cluster");
            let initdb = pg
                .tool("initdb")
                // The socket (in the owner-only data directory) is the way in;
                // TCP logins are refused even if someone turned TCP on.
                // No dependence on the machine's locales (LANG may name one not installed).
                .args(["--auth-local=trust", "--auth-host=reject", "--username=postgres", "--no-locale"])
                .args(["--encoding=UTF8", "-D"])
                .arg(&pg.data)
                .output();
            check("initdb", "creating the cluster", initdb, &pg.log())?;
            std::fs::write(pg.data.join(MARKER), "made by `ticketing dev`; it starts it again\n").map_err(data_err)?;
        }
        if pg.data.join("postmaster.pid").exists() {
            // Left running by a run that was killed: stop it, then start ours.
            let _ = pg.ctl("stop").output();
        }
        pg.start_again()?;
        Ok(pg)
    }

    /// Starts the stopped server again: its socket in the data directory, no TCP.
    pub fn start_again(&self) -> Result<(), PrivatePostgresError> {
        let options = format!(
            "-p {} -c listen_addresses='' -c unix_socket_directories='{}' -c unix_socket_permissions=0700 \
             -c max_connections=200",
            self.port,
            self.data.display()
        );
        let started = self.ctl("start").arg("-l").arg(self.data.join("server.log")).args(["-o", &options]).output();
        check("pg_ctl", "starting the server", started, &self.log())
    }

    /// Stops the server (fast shutdown).
    pub fn stop(&self) -> Result<(), PrivatePostgresError> {
        check("pg_ctl", "stopping the server", self.ctl("stop").output(), &self.log())
    }

    /// Its URL (the `postgres` maintenance database over the socket in the
    /// data directory: the host is that directory, percent-encoded).
    pub fn url(&self) -> String {
        let host: String = self
            .data
            .as_os_str()
            .as_encoded_bytes()
            .iter()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => char::from(*b).to_string(),
                other => format!("%{other:02X}"),
            })
            .collect();
        format!("postgres://postgres@{host}:{}/postgres", self.port)
    }

    /// Its data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    fn log(&self) -> String {
        self.data.join("server.log").display().to_string()
    }

    /// `pg_ctl -D <data> -w -m fast <action>`.
    fn ctl(&self, action: &str) -> Command {
        let mut command = self.tool("pg_ctl");
        command.arg("-D").arg(&self.data).args(["-w", "-t", "60", "-m", "fast", action]);
        command
    }

    /// A server tool, run as the unprivileged user when we are root, from
    /// the data directory (the tools fail in a working directory that user
    /// cannot read).
    fn tool(&self, name: &str) -> Command {
        let path = self.bindir.join(name);
        let mut command = match &self.run_as {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(path);
                command
            }
            None => Command::new(path),
        };
        command.current_dir(&self.data);
        command
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if !self.data.join("postmaster.pid").exists() {
            return;
        }
        match self.stop() {
            Ok(()) => tracing::info!(data = %self.data.display(), "stopped the private PostgreSQL"),
            Err(error) => tracing::warn!(%error, "stopping the private PostgreSQL"),
        }
    }
}

fn check(
    tool: &'static str,
    action: &'static str,
    output: std::io::Result<Output>,
    log: &str,
) -> Result<(), PrivatePostgresError> {
    let output = output.map_err(|source| PrivatePostgresError::Spawn { tool: tool.to_owned(), source })?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    Err(PrivatePostgresError::Tool {
        tool,
        action,
        status: output.status.to_string(),
        log: log.to_owned(),
        stderr: stderr.trim().chars().take(2_000).collect(),
    })
}

/// The first directory holding `initdb` and `pg_ctl`: PATH, `pg_config
/// --bindir`, Debian's and the PGDG layouts (newest version first),
/// Homebrew, Postgres.app.
pub fn server_bindir() -> Option<PathBuf> {
    let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    let mut candidates: Vec<PathBuf> =
        std::env::var_os("PATH").map(|path| std::env::split_paths(&path).collect()).unwrap_or_default();
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output() {
        if output.status.success() {
            candidates.push(PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()));
        }
    }
    candidates.extend(versioned("/usr/lib/postgresql", "", "bin"));
    candidates.extend(versioned("/usr", "pgsql-", "bin"));
    candidates.extend(versioned("/opt/homebrew/opt", "postgresql", "bin"));
    candidates.extend(versioned("/usr/local/opt", "postgresql", "bin"));
    candidates.push(PathBuf::from("/Applications/Postgres.app/Contents/Versions/latest/bin"));
    candidates.into_iter().find(|dir| has_server(dir))
}

/// `<root>/<prefix><version>/<bin>` for every such entry, newest version first.
fn versioned(root: &str, prefix: &str, bin: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root) else { return Vec::new() };
    let mut found: Vec<(u32, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let version = name.strip_prefix(prefix)?;
            let major: u32 = version.trim_start_matches('@').split('.').next()?.parse().unwrap_or(0);
            Some((major, entry.path().join(bin)))
        })
        .collect();
    found.sort_by_key(|entry| std::cmp::Reverse(entry.0));
    found.into_iter().map(|(_, path)| path).collect()
}

/// `$XDG_DATA_HOME`, else `~/Library/Application Support` on macOS and
/// `~/.local/share` elsewhere.
fn user_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) else {
        return std::env::temp_dir();
    };
    let home = PathBuf::from(home);
    if cfg!(target_os = "macos") {
        home.join("Library").join("Application Support")
    } else {
        home.join(".local").join("share")
    }
}

/// True when running as root (initdb refuses it).
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| output.status.success() && String::from_utf8_lossy(&output.stdout).trim() == "0")
}

/// The user a root-started cluster runs as: `postgres` where it exists, else `nobody`.
fn unprivileged_user() -> String {
    let exists = |user: &str| Command::new("id").arg("-u").arg(user).output().is_ok_and(|o| o.status.success());
    if exists("postgres") { "postgres" } else { "nobody" }.to_owned()
}

/// True if something accepts TCP connections at the host and port of `url`
/// within a second.
pub async fn answers(url: &str) -> bool {
    let Ok(parsed) = url::Url::parse(url) else { return false };
    let host = parsed.host_str().unwrap_or("localhost").to_owned();
    let port = parsed.port().unwrap_or(5432);
    let connect = tokio::net::TcpStream::connect((host.as_str(), port));
    matches!(tokio::time::timeout(std::time::Duration::from_secs(1), connect).await, Ok(Ok(_)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn versioned_directories_are_tried_newest_first() {
        let root = std::env::temp_dir().join(format!("ticketing-versioned-{}", uuid::Uuid::new_v4().simple()));
        for version in ["9.6", "15", "17", "16"] {
            std::fs::create_dir_all(root.join(version).join("bin")).unwrap();
        }
        let found = versioned(root.to_str().unwrap(), "", "bin");
        let majors: Vec<String> =
            found.iter().map(|p| p.parent().unwrap().file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(majors, ["17", "16", "15", "9.6"]);
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn the_url_names_the_socket_directory_and_a_foreign_directory_is_left_alone() {
        let pg = PrivatePostgres {
            bindir: PathBuf::new(),
            data: PathBuf::from("/tmp/dev pg"),
            port: SOCKET_PORT,
            run_as: None,
        };
        assert_eq!(pg.url(), "postgres://postgres@%2Ftmp%2Fdev%20pg:5432/postgres");
        drop(pg);
        let foreign = std::env::temp_dir().join(format!("ticketing-foreign-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&foreign).unwrap();
        std::fs::write(foreign.join("notes.txt"), "mine").unwrap();
        if server_bindir().is_some() {
            assert!(matches!(PrivatePostgres::start(&foreign), Err(PrivatePostgresError::NotOurs { .. })));
        }
        assert_eq!(std::fs::read_to_string(foreign.join("notes.txt")).unwrap(), "mine", "untouched");
        let _ = std::fs::remove_dir_all(foreign);
    }

    #[tokio::test]
    async fn a_closed_port_does_not_answer() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        assert!(!answers(&format!("postgres://postgres@127.0.0.1:{port}/postgres")).await);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap().port();
        assert!(answers(&format!("postgres://postgres@127.0.0.1:{open}/postgres")).await);
    }
}
