//! The STOMP 1.2 commands.

use std::fmt;

use crate::decoder::DecodeError;

/// How many bytes of an unknown command are kept in [`DecodeError::UnknownCommand`].
const UNKNOWN_COMMAND_SHOWN: usize = 32;

/// The longest command line a valid frame can have: `UNSUBSCRIBE` and a CR before the LF.
/// The decoder refuses a first line that grows past this without waiting for its end.
pub(crate) const MAX_COMMAND_LINE: usize = 12;

/// A STOMP 1.2 command, the first line of every frame.
///
/// Commands are case-sensitive on the wire: `send` is not `SEND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    // Client to server.
    Connect,
    Stomp,
    Send,
    Subscribe,
    Unsubscribe,
    Ack,
    Nack,
    Begin,
    Commit,
    Abort,
    Disconnect,
    // Server to client.
    Connected,
    Message,
    Receipt,
    Error,
}

impl Command {
    /// Every command, client commands first.
    pub const ALL: [Command; 15] = [
        Command::Connect,
        Command::Stomp,
        Command::Send,
        Command::Subscribe,
        Command::Unsubscribe,
        Command::Ack,
        Command::Nack,
        Command::Begin,
        Command::Commit,
        Command::Abort,
        Command::Disconnect,
        Command::Connected,
        Command::Message,
        Command::Receipt,
        Command::Error,
    ];

    /// The command as written on the wire, e.g. `"SEND"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Connect => "CONNECT",
            Command::Stomp => "STOMP",
            Command::Send => "SEND",
            Command::Subscribe => "SUBSCRIBE",
            Command::Unsubscribe => "UNSUBSCRIBE",
            Command::Ack => "ACK",
            Command::Nack => "NACK",
            Command::Begin => "BEGIN",
            Command::Commit => "COMMIT",
            Command::Abort => "ABORT",
            Command::Disconnect => "DISCONNECT",
            Command::Connected => "CONNECTED",
            Command::Message => "MESSAGE",
            Command::Receipt => "RECEIPT",
            Command::Error => "ERROR",
        }
    }

    /// Parses a command line (without its EOL).
    ///
    /// An unknown command is a [`DecodeError::UnknownCommand`] carrying at most the first
    /// 32 bytes of what was received, lossily converted to text.
    pub fn from_bytes(line: &[u8]) -> Result<Command, DecodeError> {
        Ok(match line {
            b"CONNECT" => Command::Connect,
            b"STOMP" => Command::Stomp,
            b"SEND" => Command::Send,
            b"SUBSCRIBE" => Command::Subscribe,
            b"UNSUBSCRIBE" => Command::Unsubscribe,
            b"ACK" => Command::Ack,
            b"NACK" => Command::Nack,
            b"BEGIN" => Command::Begin,
            b"COMMIT" => Command::Commit,
            b"ABORT" => Command::Abort,
            b"DISCONNECT" => Command::Disconnect,
            b"CONNECTED" => Command::Connected,
            b"MESSAGE" => Command::Message,
            b"RECEIPT" => Command::Receipt,
            b"ERROR" => Command::Error,
            other => return Err(unknown_command(other)),
        })
    }

    /// Whether header names and values of this command are escaped on the wire.
    ///
    /// STOMP 1.2 exempts `CONNECT` and `CONNECTED` so that 1.0 peers can still negotiate;
    /// their headers are taken byte for byte (and so cannot carry CR, LF, or a `:` in a name).
    pub fn escapes_headers(self) -> bool {
        !matches!(self, Command::Connect | Command::Connected)
    }

    /// Whether STOMP 1.2 lets this command carry a body (`SEND`, `MESSAGE`, `ERROR`).
    ///
    /// The codec does not enforce this; refusing a body is the session's decision.
    pub fn allows_body(self) -> bool {
        matches!(self, Command::Send | Command::Message | Command::Error)
    }
}

/// The error for a command line (or the start of one) that is no command.
pub(crate) fn unknown_command(line: &[u8]) -> DecodeError {
    let shown = &line[..line.len().min(UNKNOWN_COMMAND_SHOWN)];
    DecodeError::UnknownCommand {
        command: String::from_utf8_lossy(shown).into_owned(),
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_parses_back_from_its_text() {
        for command in Command::ALL {
            assert_eq!(
                Command::from_bytes(command.as_str().as_bytes()),
                Ok(command)
            );
            assert!(command.as_str().len() < MAX_COMMAND_LINE);
        }
    }

    #[test]
    fn unknown_and_lowercase_commands_are_refused_with_truncated_text() {
        assert_eq!(
            Command::from_bytes(b"send"),
            Err(DecodeError::UnknownCommand {
                command: "send".into()
            })
        );
        let long = [b'X'; 100];
        match Command::from_bytes(&long) {
            Err(DecodeError::UnknownCommand { command }) => assert_eq!(command.len(), 32),
            other => panic!("expected UnknownCommand, got {other:?}"),
        }
    }

    #[test]
    fn only_connect_and_connected_skip_escaping() {
        let unescaped: Vec<_> = Command::ALL
            .into_iter()
            .filter(|c| !c.escapes_headers())
            .collect();
        assert_eq!(unescaped, [Command::Connect, Command::Connected]);
    }
}
