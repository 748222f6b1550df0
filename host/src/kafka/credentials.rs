//! A SASL password kept in a file (as Kubernetes mounts a Secret), followed
//! while the daemon runs: when the file changes, the running clients log in
//! with the new password at their next connection, without a restart.
//!
//! Owns the file watch and the hand-over to librdkafka; which clients exist
//! and when they reconnect is theirs.

use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rdkafka::client::{Client, ClientContext};
use tokio_util::sync::CancellationToken;

/// How often the file is looked at.
const POLL: Duration = Duration::from_millis(500);

/// Gives `client` the SASL login it uses from its next authentication on;
/// connections already logged in stay as they are.
pub fn set_credentials<C: ClientContext>(
    client: &Client<C>,
    username: &str,
    password: &str,
) -> Result<(), String> {
    let username = CString::new(username).map_err(|_| "the username holds a NUL byte")?;
    let password = CString::new(password).map_err(|_| "the password holds a NUL byte")?;
    // SAFETY: the client's handle is valid while `client` lives, and
    // librdkafka copies both strings before it returns.
    let error = unsafe {
        rdkafka::bindings::rd_kafka_sasl_set_credentials(
            client.native_ptr(),
            username.as_ptr(),
            password.as_ptr(),
        )
    };
    if error.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null error is ours to read and then destroy, once.
    let text = unsafe {
        let text = CStr::from_ptr(rdkafka::bindings::rd_kafka_error_string(error))
            .to_string_lossy()
            .into_owned();
        rdkafka::bindings::rd_kafka_error_destroy(error);
        text
    };
    Err(text)
}

/// Reads a secret file: its text without the one trailing line break that
/// editors, `echo` and `kubectl create secret --from-file` leave.
pub fn read_secret(path: &Path) -> std::io::Result<String> {
    let text = std::fs::read_to_string(path)?;
    let text = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(&text);
    Ok(text.to_owned())
}

/// A password file and the user it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordFile {
    pub username: String,
    pub path: PathBuf,
}

/// Follows `file` until `stop`: each time its content settles on a new
/// password, `apply` is called with the user and the password (which it
/// hands to every client). A file that cannot be read is logged, and the
/// clients keep the password they have.
pub async fn follow(
    file: PasswordFile,
    stop: CancellationToken,
    apply: impl Fn(&str, &str) + Send + 'static,
) {
    let stamp = |path: &Path| -> Option<(u64, Option<SystemTime>)> {
        std::fs::metadata(path)
            .ok()
            .map(|m| (m.len(), m.modified().ok()))
    };
    let mut applied = read_secret(&file.path).ok();
    let mut seen = stamp(&file.path);
    let mut ticker = tokio::time::interval(POLL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let now = stamp(&file.path);
        // Read once the file is the same at two looks in a row: a writer
        // may be half-way through.
        if now != seen {
            seen = now;
            continue;
        }
        match read_secret(&file.path) {
            Ok(password) if applied.as_ref() != Some(&password) => {
                tracing::info!(
                    path = %file.path.display(),
                    username = file.username,
                    "the SASL password file changed: the clients log in with it from their next \
                     connection"
                );
                apply(&file.username, &password);
                applied = Some(password);
            }
            Ok(_) => {}
            Err(e) if applied.is_some() => {
                tracing::warn!(
                    path = %file.path.display(),
                    "cannot read the SASL password file; the clients keep the password they \
                     have: {e}"
                );
                applied = None;
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_file_is_read_without_its_trailing_line_break() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("password");
        for (text, secret) in [
            ("pa ss\n", "pa ss"),
            ("pa ss\r\n", "pa ss"),
            ("pa ss\n\n", "pa ss\n"),
        ] {
            std::fs::write(&path, text).expect("write");
            assert_eq!(read_secret(&path).expect("read"), secret, "{text:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_changed_password_file_is_applied_once_it_settles() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("password");
        std::fs::write(&path, "old\n").expect("write");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let file = PasswordFile {
            username: "orders".into(),
            path: path.clone(),
        };
        let task = tokio::spawn(follow(file, stop.clone(), move |user, password| {
            let _ = tx.send((user.to_owned(), password.to_owned()));
        }));
        tokio::time::sleep(POLL * 3).await;
        assert!(rx.try_recv().is_err(), "an unchanged file is not applied");
        std::fs::write(&path, "new-password\n").expect("write");
        let applied = tokio::time::timeout(POLL * 10, rx.recv()).await;
        assert_eq!(
            applied.expect("applied").expect("sent"),
            ("orders".to_owned(), "new-password".to_owned())
        );
        stop.cancel();
        task.await.expect("the watch ends");
    }
}
