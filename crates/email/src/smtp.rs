//! Delivery to the SMTP server: lettre speaks the protocol (EHLO, STARTTLS, AUTH, the
//! transaction itself), deadpool keeps the connections.
//!
//! lettre's own transport leaves Nagle's algorithm on, and every message it sends writes the
//! body and then the five-byte end-of-data marker as two writes: Nagle holds the marker until
//! the server acknowledges the body, which the server's delayed ACK puts off by 40 ms. That
//! capped one connection at about 23 e-mails/s. Connections made here set `TCP_NODELAY` and
//! hand the socket to lettre. Implicit TLS (`SMTP_TLS=tls`) still goes through lettre's
//! transport, which wraps the socket itself.

use std::time::Duration;

use anyhow::Context;
use deadpool::managed::{self, Metrics, Object, Pool, RecycleError, RecycleResult};
use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use tokio::net::TcpStream;

use crate::settings::{EmailSettings, SmtpTls};

/// Why an e-mail did not go out.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The server refused it with a permanent (5xx) answer: asking again changes nothing.
    #[error("refused by the SMTP server: {0}")]
    Refused(lettre::transport::smtp::Error),
    /// Anything worth another attempt: no connection, a timeout, a transient (4xx) answer.
    #[error(transparent)]
    Transient(anyhow::Error),
}

/// Sends e-mails over at most `EMAIL_CONCURRENCY` connections to the SMTP server.
pub struct Smtp {
    inner: Inner,
}

impl std::fmt::Debug for Smtp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.inner {
            Inner::Pooled { .. } => "pooled, TCP_NODELAY",
            Inner::ImplicitTls(_) => "implicit TLS",
        };
        f.debug_struct("Smtp").field("connections", &kind).finish()
    }
}

enum Inner {
    Pooled {
        pool: Pool<Connector>,
        timeout: Duration,
    },
    ImplicitTls(AsyncSmtpTransport<Tokio1Executor>),
}

impl Smtp {
    /// Sets up the connections' pool; connections are opened by the first sends.
    pub fn new(settings: &EmailSettings) -> anyhow::Result<Self> {
        let host = settings.host();
        let credentials = settings
            .credentials()
            .map(|(user, password)| Credentials::new(user.into(), password.expose().into()));
        let starttls = match settings.smtp_tls {
            SmtpTls::Tls => {
                let mut builder = AsyncSmtpTransport::<Tokio1Executor>::relay(host)
                    .with_context(|| format!("setting up TLS to {host}"))?
                    .port(settings.smtp_port)
                    .timeout(Some(settings.smtp_timeout))
                    .pool_config(PoolConfig::new().max_size(pool_size(settings)));
                if let Some(credentials) = credentials {
                    builder = builder.credentials(credentials);
                }
                return Ok(Self {
                    inner: Inner::ImplicitTls(builder.build()),
                });
            }
            SmtpTls::StartTls => Some(
                TlsParameters::new(host.to_owned())
                    .with_context(|| format!("setting up STARTTLS to {host}"))?,
            ),
            SmtpTls::None => None,
        };
        let connector = Connector {
            host: host.to_owned(),
            port: settings.smtp_port,
            timeout: settings.smtp_timeout,
            hello: ClientId::default(),
            starttls,
            credentials,
        };
        let pool = Pool::builder(connector)
            .max_size(settings.concurrency)
            .build()
            .context("building the SMTP connection pool")?;
        Ok(Self {
            inner: Inner::Pooled {
                pool,
                timeout: settings.smtp_timeout,
            },
        })
    }

    /// Sends one e-mail; `Ok` once the server took it.
    pub async fn send(&self, message: &Message) -> Result<(), SendError> {
        let (pool, timeout) = match &self.inner {
            Inner::Pooled { pool, timeout } => (pool, *timeout),
            Inner::ImplicitTls(transport) => {
                return match transport.send(message.clone()).await {
                    Ok(_) => Ok(()),
                    Err(err) => Err(classify(err)),
                };
            }
        };
        let mut connection = pool.get().await.map_err(|err| match err {
            managed::PoolError::Backend(err) => SendError::Transient(err),
            other => SendError::Transient(anyhow::anyhow!("no SMTP connection: {other}")),
        })?;
        let bytes = message.formatted();
        match tokio::time::timeout(timeout, connection.send(message.envelope(), &bytes)).await {
            Ok(Ok(_)) => Ok(()),
            // lettre aborts the connection on any error, so the pool's recycle drops it.
            Ok(Err(err)) => Err(classify(err)),
            // Cut off mid-command: not marked broken, so it must not go back to the pool.
            Err(_) => {
                drop(Object::take(connection));
                Err(SendError::Transient(anyhow::anyhow!(
                    "the SMTP server did not answer within {timeout:?}"
                )))
            }
        }
    }
}

fn pool_size(settings: &EmailSettings) -> u32 {
    u32::try_from(settings.concurrency).unwrap_or(u32::MAX)
}

fn classify(err: lettre::transport::smtp::Error) -> SendError {
    if err.is_permanent() {
        SendError::Refused(err)
    } else {
        SendError::Transient(err.into())
    }
}

/// How recently a pooled connection must have been used to be handed out without a NOOP.
const FRESH: Duration = Duration::from_secs(1);

/// Opens connections for the pool: TCP with `TCP_NODELAY`, then lettre's EHLO, STARTTLS and
/// AUTH as configured.
struct Connector {
    host: String,
    port: u16,
    timeout: Duration,
    hello: ClientId,
    starttls: Option<TlsParameters>,
    credentials: Option<Credentials>,
}

impl Connector {
    async fn open(&self) -> anyhow::Result<AsyncSmtpConnection> {
        let address = format!("{}:{}", self.host, self.port);
        let stream = TcpStream::connect(&address)
            .await
            .with_context(|| format!("connecting to the SMTP server at {address}"))?;
        stream
            .set_nodelay(true)
            .context("setting TCP_NODELAY on the SMTP connection")?;
        let mut connection =
            AsyncSmtpConnection::connect_with_transport(Box::new(stream), &self.hello)
                .await
                .with_context(|| format!("greeting the SMTP server at {address}"))?;
        if let Some(tls) = &self.starttls {
            connection
                .starttls(tls.clone(), &self.hello)
                .await
                .with_context(|| format!("STARTTLS with {address}"))?;
        }
        if let Some(credentials) = &self.credentials {
            connection
                .auth(&[Mechanism::Plain, Mechanism::Login], credentials)
                .await
                .with_context(|| format!("authenticating with {address}"))?;
        }
        Ok(connection)
    }
}

impl managed::Manager for Connector {
    type Type = AsyncSmtpConnection;
    type Error = anyhow::Error;

    async fn create(&self) -> anyhow::Result<AsyncSmtpConnection> {
        tokio::time::timeout(self.timeout, self.open())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "the SMTP server at {}:{} did not answer within {:?}",
                    self.host,
                    self.port,
                    self.timeout
                )
            })?
    }

    async fn recycle(
        &self,
        connection: &mut AsyncSmtpConnection,
        metrics: &Metrics,
    ) -> RecycleResult<anyhow::Error> {
        if connection.has_broken() {
            return Err(RecycleError::message("SMTP connection broken"));
        }
        // A NOOP tells a live connection from one the server closed while it idled. One in
        // use a moment ago is live: asking would add a round trip to every e-mail. Should the
        // server have closed it anyway, the send fails and is tried again.
        if metrics.last_used() < FRESH {
            return Ok(());
        }
        let alive = tokio::time::timeout(self.timeout, connection.test_connected())
            .await
            .unwrap_or(false);
        if alive {
            Ok(())
        } else {
            Err(RecycleError::message("SMTP connection closed"))
        }
    }
}
