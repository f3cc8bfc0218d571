//! Logging set-up. The subscriber is built separately from being installed, and writes to any
//! sink, so tests can capture or silence it.
//!
//! The server's sink is [`Buffered`] stdout: a line per join is the audit trail of who served
//! whom, and writing each line to stdout with a syscall of its own cost a join more than the
//! join itself does. A background writer thread per line (tracing-appender's) costs a thread
//! wake-up per line instead, which showed as a 1.5× p99 in `make bench`.

use std::io::{BufWriter, Write};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tracing::Subscriber;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::LogFormat;

/// Builds a subscriber that honours `RUST_LOG` (default `default_filter`) and writes to `sink`.
pub fn subscriber<W>(
    default_filter: &str,
    format: LogFormat,
    sink: W,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(sink);
    match format {
        LogFormat::Json => Box::new(
            builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .finish(),
        ),
        LogFormat::Pretty => Box::new(builder.finish()),
    }
}

/// Installs `subscriber` for the whole process. Call once.
pub fn init(subscriber: Box<dyn Subscriber + Send + Sync>) {
    tracing::subscriber::set_global_default(subscriber)
        .expect("a tracing subscriber was already set");
}

/// Stdout behind one 64 KiB buffer shared by every thread, flushed every [`Buffered::EVERY`] by
/// a thread of its own and when full: lines reach stdout at most that late, in order, and none
/// is dropped. Dropping the last handle flushes what is left (keep one until `main` returns).
#[derive(Clone)]
pub struct Buffered(Arc<Mutex<BufWriter<std::io::Stdout>>>);

impl Buffered {
    /// How often the buffer is flushed.
    pub const EVERY: Duration = Duration::from_millis(100);

    /// Buffers stdout and starts the flushing thread.
    pub fn stdout() -> Self {
        let shared = Arc::new(Mutex::new(BufWriter::with_capacity(
            64 * 1024,
            std::io::stdout(),
        )));
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("log-flush".into())
            .spawn(move || loop {
                std::thread::sleep(Self::EVERY);
                let Some(shared) = weak.upgrade() else { break };
                let _ = lock(&shared).flush();
            })
            .expect("spawn the log flushing thread");
        Self(shared)
    }
}

fn lock(shared: &Mutex<BufWriter<std::io::Stdout>>) -> MutexGuard<'_, BufWriter<std::io::Stdout>> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

impl Drop for Buffered {
    fn drop(&mut self) {
        let _ = lock(&self.0).flush();
    }
}

/// One event's write into the shared buffer.
pub struct BufferedLine<'a>(MutexGuard<'a, BufWriter<std::io::Stdout>>);

impl Write for BufferedLine<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        // Flushed by the thread, not per event.
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Buffered {
    type Writer = BufferedLine<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        BufferedLine(lock(&self.0))
    }
}
