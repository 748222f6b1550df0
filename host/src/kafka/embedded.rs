//! The embedded development broker: librdkafka's in-process mock cluster.
//!
//! In memory and bounded (it keeps only a recent tail of each partition), for
//! trying Sluice out and for fault-injection tests, never for production.

use std::sync::mpsc;
use std::thread::JoinHandle;

use rdkafka::mocking::MockCluster;

/// A running mock cluster, owned by a thread of its own (it is not `Send`);
/// dropping this stops it.
pub struct EmbeddedBroker {
    bootstrap: String,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// Partitions of every topic the embedded broker creates.
pub const EMBEDDED_PARTITIONS: i32 = 3;

impl EmbeddedBroker {
    /// Starts a one-broker cluster with the given topics.
    pub fn start(topics: &[String]) -> anyhow::Result<EmbeddedBroker> {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let topics = topics.to_vec();
        let thread = std::thread::Builder::new()
            .name("sluice-embedded-broker".into())
            .spawn(move || {
                let cluster = match MockCluster::new(1) {
                    Ok(cluster) => cluster,
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow::anyhow!(
                            "cannot start the embedded broker: {e}"
                        )));
                        return;
                    }
                };
                for topic in &topics {
                    if let Err(e) = cluster.create_topic(topic, EMBEDDED_PARTITIONS, 1) {
                        let _ = ready_tx.send(Err(anyhow::anyhow!(
                            "cannot create topic {topic} on the embedded broker: {e}"
                        )));
                        return;
                    }
                }
                let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                // Blocks until the handle is dropped.
                let _ = stop_rx.recv();
            })?;
        let bootstrap = ready_rx
            .recv()
            .map_err(|_| anyhow::anyhow!("the embedded broker thread died while starting"))??;
        Ok(EmbeddedBroker {
            bootstrap,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The address clients connect to.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
