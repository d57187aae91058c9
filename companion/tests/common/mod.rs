//! Shared helpers: a temporary workspace (store, signing key, admin token) and a way to run the
//! real `keyward` binary in it.

#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use keyward_engine::signed_snapshot::SigningKey;
use serde_json::Value;
use tempfile::TempDir;

pub const SIGNING_KEY_ID: &str = "ops-1";
pub const ADMIN_NAME: &str = "ops";

pub struct Workspace {
    pub dir: TempDir,
}

impl Workspace {
    /// A fresh directory with a signing key and an admin token made by `keyward secret`.
    pub fn new() -> Workspace {
        let workspace = Workspace {
            dir: tempfile::tempdir().unwrap(),
        };
        workspace.ok(&[
            "secret",
            "signing-key",
            "--out",
            workspace.path("signing.key").to_str().unwrap(),
        ]);
        workspace.ok(&[
            "secret",
            "admin-token",
            "--name",
            ADMIN_NAME,
            "--out",
            workspace.path("admin.tokens").to_str().unwrap(),
        ]);
        workspace
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn db(&self) -> PathBuf {
        self.path("keyward.db")
    }

    pub fn admin_token(&self) -> String {
        let line = fs::read_to_string(self.path("admin.tokens")).unwrap();
        line.trim().split_once(':').unwrap().1.to_owned()
    }

    pub fn signing_key(&self) -> SigningKey {
        let secret = fs::read_to_string(self.path("signing.key")).unwrap();
        SigningKey::from_base64(SIGNING_KEY_ID, secret.trim()).unwrap()
    }

    /// `--signing-key-id ops-1 --signing-key-file <dir>/signing.key`
    pub fn signing_args(&self) -> Vec<String> {
        vec![
            "--signing-key-id".into(),
            SIGNING_KEY_ID.into(),
            "--signing-key-file".into(),
            self.path("signing.key").to_string_lossy().into_owned(),
        ]
    }

    pub fn command(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_keyward"));
        command
            .current_dir(self.dir.path())
            .env("KEYWARD_DB", self.db())
            .env_remove("KEYWARD_ACTOR")
            .env_remove("KEYWARD_SIGNING_KEY_ID")
            .env_remove("KEYWARD_SIGNING_KEY_FILE")
            .env_remove("KEYWARD_ADMIN_TOKEN_FILE");
        command
    }

    pub fn run<S: AsRef<str>>(&self, args: &[S]) -> Output {
        self.command()
            .args(args.iter().map(AsRef::as_ref))
            .output()
            .unwrap()
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok<S: AsRef<str>>(&self, args: &[S]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "keyward {:?} failed: {}",
            args.iter().map(AsRef::as_ref).collect::<Vec<_>>(),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// Runs and asserts failure; returns stderr.
    pub fn fails<S: AsRef<str>>(&self, args: &[S]) -> String {
        let output = self.run(args);
        assert!(
            !output.status.success(),
            "keyward {:?} should have failed",
            args.iter().map(AsRef::as_ref).collect::<Vec<_>>()
        );
        String::from_utf8(output.stderr).unwrap()
    }

    pub fn json<S: AsRef<str>>(&self, args: &[S]) -> Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }

    /// Creates a key with `--json`; returns (key id, plaintext).
    pub fn create_key(&self, extra: &[&str]) -> (String, String) {
        let mut args = vec!["key", "create", "--json"];
        args.extend_from_slice(extra);
        let created = self.json(&args);
        (
            created["id"].as_str().unwrap().to_owned(),
            created["key"].as_str().unwrap().to_owned(),
        )
    }

    /// Builds a snapshot into `name`, checks it with `snapshot verify`, and returns the
    /// envelope's bytes.
    pub fn build_snapshot(&self, name: &str) -> Vec<u8> {
        let out = self.path(name);
        let mut args = vec!["snapshot".to_owned(), "build".to_owned()];
        args.extend(self.signing_args());
        args.extend(["--out".to_owned(), out.to_string_lossy().into_owned()]);
        self.ok(&args);
        let mut verify = vec![
            "snapshot".to_owned(),
            "verify".to_owned(),
            out.to_string_lossy().into_owned(),
        ];
        verify.extend(self.signing_args());
        let printed = self.ok(&verify);
        assert!(printed.starts_with("ok: version "), "{printed}");
        fs::read(out).unwrap()
    }
}

/// Every text, blob and number in every table of the SQLite file, and the raw bytes of the
/// database and its journal files, must be free of `needles`.
pub fn assert_store_never_holds(db: &Path, needles: &[&str]) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let file = PathBuf::from(format!("{}{suffix}", db.display()));
        if let Ok(bytes) = fs::read(&file) {
            for needle in needles {
                assert!(
                    !bytes
                        .windows(needle.len())
                        .any(|window| window == needle.as_bytes()),
                    "{} holds a secret",
                    file.display()
                );
            }
        }
    }
    let conn = rusqlite::Connection::open(db).unwrap();
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(tables.iter().any(|t| t == "keys"));
    assert!(tables.iter().any(|t| t == "audit_events"));
    let mut cells = 0;
    for table in &tables {
        let mut statement = conn.prepare(&format!("SELECT * FROM \"{table}\"")).unwrap();
        let columns = statement.column_count();
        let mut rows = statement.query([]).unwrap();
        while let Some(row) = rows.next().unwrap() {
            for column in 0..columns {
                let text = match row.get_ref(column).unwrap() {
                    rusqlite::types::ValueRef::Null => String::new(),
                    rusqlite::types::ValueRef::Integer(n) => n.to_string(),
                    rusqlite::types::ValueRef::Real(x) => x.to_string(),
                    rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => {
                        String::from_utf8_lossy(t).into_owned()
                    }
                };
                cells += 1;
                for needle in needles {
                    assert!(
                        !text.contains(needle),
                        "table {table} column {column} holds a secret"
                    );
                }
            }
        }
    }
    assert!(cells > 0);
}

/// Starts `keyward ARGS` (a `serve`) with stdout piped; returns the child and the base URL it
/// printed on its first line (`keyward: listening on http://127.0.0.1:PORT`).
pub fn spawn_serve<S: AsRef<std::ffi::OsStr>>(ws: &Workspace, args: &[S]) -> (Child, String) {
    let mut child = ws
        .command()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let base = line
        .trim()
        .strip_prefix("keyward: listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    (child, base)
}
