//! The SMTP email provider: one SMTP session per message to a relay
//! (RFC 5321: EHLO, optional AUTH PLAIN, MAIL, RCPT, DATA), a UTF-8 text
//! message with the subject encoded per RFC 2047 and the body in base64.
//! The Message-ID is the message id on every attempt, so a relay or mailbox
//! that already has it can drop a resend. A 5xx answer is final; anything
//! else that fails is retried. Plain SMTP (port 25 or 587 inside the
//! network): TLS belongs to the relay (decision 0016).

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use huitou_runtime::auth::BoxFuture;
use secrecy::{ExposeSecret, SecretString};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::{Outgoing, Provider, SendError};

/// Sends email through an SMTP relay.
pub struct SmtpProvider {
    name: String,
    relay: String,
    from: String,
    user: String,
    password: SecretString,
    timeout: Duration,
}

impl SmtpProvider {
    /// A provider sending through `relay` (host:port) as `from`; with a
    /// `user`, it authenticates with AUTH PLAIN.
    pub fn new(
        name: &str,
        relay: &str,
        from: &str,
        user: &str,
        password: SecretString,
        timeout: Duration,
    ) -> Self {
        Self {
            name: name.to_owned(),
            relay: relay.to_owned(),
            from: from.to_owned(),
            user: user.to_owned(),
            password,
            timeout,
        }
    }

    async fn session(&self, m: &Outgoing) -> Result<String, SendError> {
        let stream = TcpStream::connect(&self.relay)
            .await
            .map_err(|e| SendError::Transient(format!("connect {}: {e}", self.relay)))?;
        let (read, mut write) = stream.into_split();
        let mut read = BufReader::new(read);
        expect(&mut read, 220).await?;
        command(&mut write, "EHLO huitou\r\n").await?;
        expect(&mut read, 250).await?;
        if !self.user.is_empty() {
            let token = STANDARD.encode(format!(
                "\0{}\0{}",
                self.user,
                self.password.expose_secret()
            ));
            command(&mut write, &format!("AUTH PLAIN {token}\r\n")).await?;
            expect(&mut read, 235).await?;
        }
        command(&mut write, &format!("MAIL FROM:<{}>\r\n", self.from)).await?;
        expect(&mut read, 250).await?;
        command(&mut write, &format!("RCPT TO:<{}>\r\n", m.to)).await?;
        expect(&mut read, 250).await?;
        command(&mut write, "DATA\r\n").await?;
        expect(&mut read, 354).await?;
        command(&mut write, &message_text(&self.from, m)).await?;
        let queued = expect(&mut read, 250).await?;
        let _ = command(&mut write, "QUIT\r\n").await;
        // The relay's queue id, when it names one ("250 2.0.0 Ok: queued as ABC").
        let id = queued
            .rsplit(' ')
            .next()
            .filter(|s| !s.is_empty() && s.len() <= 64 && queued.contains("queued"))
            .map_or_else(|| m.id.clone(), str::to_owned);
        Ok(format!("{}:{id}", self.name))
    }
}

/// The message as DATA carries it, ending with the lone dot.
pub fn message_text(from: &str, m: &Outgoing) -> String {
    let subject = format!("=?UTF-8?B?{}?=", STANDARD.encode(m.subject.as_bytes()));
    let body = STANDARD.encode(m.text.as_bytes());
    let mut lines = String::with_capacity(body.len() + 512);
    lines.push_str(&format!(
        "From: <{from}>\r\nTo: <{}>\r\nSubject: {subject}\r\nMessage-ID: <{}@huitou>\r\n\
         Date: {}\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: base64\r\nX-Huitou-Shop: {}\r\n\r\n",
        m.to,
        m.id,
        chrono::Utc::now().to_rfc2822(),
        m.shop_id,
    ));
    // Base64 lines never start with a dot, so no dot-stuffing is needed.
    for chunk in body.as_bytes().chunks(76) {
        lines.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        lines.push_str("\r\n");
    }
    lines.push_str(".\r\n");
    lines
}

async fn command(write: &mut tokio::net::tcp::OwnedWriteHalf, text: &str) -> Result<(), SendError> {
    write
        .write_all(text.as_bytes())
        .await
        .map_err(|e| SendError::Transient(e.to_string()))
}

/// Reads one (possibly multi-line) reply; its last line when the code is
/// `want`, an error otherwise (5xx final, the rest retried).
async fn expect(
    read: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    want: u16,
) -> Result<String, SendError> {
    loop {
        let mut line = String::new();
        let n = read
            .read_line(&mut line)
            .await
            .map_err(|e| SendError::Transient(e.to_string()))?;
        if n == 0 {
            return Err(SendError::Transient(
                "the relay closed the connection".into(),
            ));
        }
        let line = line.trim_end().to_owned();
        let code: u16 = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
        // "250-…" continues; "250 …" ends the reply.
        if line.as_bytes().get(3) == Some(&b'-') {
            continue;
        }
        return match code {
            c if c == want => Ok(line),
            500..=599 => Err(SendError::Permanent(format!("SMTP {line}"))),
            _ => Err(SendError::Transient(format!("SMTP {line}"))),
        };
    }
}

impl Provider for SmtpProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn send<'a>(&'a self, message: &'a Outgoing) -> BoxFuture<'a, Result<String, SendError>> {
        Box::pin(async move {
            match tokio::time::timeout(self.timeout, self.session(message)).await {
                Ok(answer) => answer,
                Err(_) => Err(SendError::Transient(format!(
                    "no answer within {} ms",
                    self.timeout.as_millis()
                ))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_is_utf8_base64_with_the_message_id() {
        let m = Outgoing {
            id: "m-1".into(),
            shop_id: "s".into(),
            customer_id: "c".into(),
            channel: "email",
            to: "wang@example.com".into(),
            text: "亲，双11快乐".into(),
            subject: "双11".into(),
            provider_template_id: String::new(),
            variables: Default::default(),
            attempt: 1,
        };
        let text = message_text("shop@example.com", &m);
        assert!(text.contains("Message-ID: <m-1@huitou>"));
        assert!(text.contains(&format!("=?UTF-8?B?{}?=", STANDARD.encode("双11"))));
        assert!(text.contains(&STANDARD.encode("亲，双11快乐")));
        assert!(text.ends_with("\r\n.\r\n"));
    }
}
