//! The client half of RFB (RFC 6143) as a person's browser speaks it to QEMU's VNC server,
//! read message by message: view-only mode drops every input message before it reaches QEMU
//! (QEMU has no per-client view-only), control mode passes input on and reports it for the
//! review ledger. A message this filter does not know ends the connection: passing bytes it
//! cannot frame would let a view-only client smuggle input after them.

/// Input a person sent (control mode only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A key press or release; `raw` is the message as sent (to release a key still held when
    /// the viewer goes).
    Key {
        down: bool,
        keysym: u32,
        raw: Vec<u8>,
    },
    /// The pointer at (x, y) in screen pixels with these buttons held (bit 0 left, 1 middle,
    /// 2 right, 3-6 wheel).
    Pointer { mask: u8, x: u16, y: u16 },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RfbError {
    #[error("not an RFB 3.7/3.8 client (version {0:?})")]
    Version(String),
    #[error("security type {0} asked for; the view offers none but \"None\" (1)")]
    Security(u8),
    #[error("RFB client message type {0} is not carried by the live view")]
    Unsupported(u8),
    #[error("RFB client message of {0} bytes is too long")]
    TooLong(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Version,
    Security,
    ClientInit,
    Messages,
}

/// The longest client message accepted (a clipboard text, which is dropped anyway).
const MAX_MESSAGE: usize = 1 << 20;

pub struct ClientFilter {
    control: bool,
    stage: Stage,
    buf: Vec<u8>,
}

/// What to do with one complete client message.
enum Verdict {
    Forward,
    Drop,
    Input(Input),
}

impl ClientFilter {
    pub fn new(control: bool) -> Self {
        ClientFilter {
            control,
            stage: Stage::Version,
            buf: Vec::new(),
        }
    }

    /// Takes bytes from the client: what may go on to QEMU is appended to `out`, the input it
    /// carried to `inputs`. Partial messages wait for the rest.
    pub fn feed(
        &mut self,
        data: &[u8],
        out: &mut Vec<u8>,
        inputs: &mut Vec<Input>,
    ) -> Result<(), RfbError> {
        self.buf.extend_from_slice(data);
        let mut at = 0;
        loop {
            let rest = &self.buf[at..];
            let need = match self.stage {
                Stage::Version => 12,
                Stage::Security | Stage::ClientInit => 1,
                Stage::Messages => match message_len(rest)? {
                    Some(n) => n,
                    None => break,
                },
            };
            if rest.len() < need {
                break;
            }
            let msg = &rest[..need];
            match self.stage {
                Stage::Version => {
                    if msg != b"RFB 003.008\n" && msg != b"RFB 003.007\n" {
                        return Err(RfbError::Version(
                            String::from_utf8_lossy(msg).trim().to_string(),
                        ));
                    }
                    out.extend_from_slice(msg);
                    self.stage = Stage::Security;
                }
                Stage::Security => {
                    if msg[0] != 1 {
                        return Err(RfbError::Security(msg[0]));
                    }
                    out.push(1);
                    self.stage = Stage::ClientInit;
                }
                Stage::ClientInit => {
                    // Always shared: a viewer asking for exclusive access would cut the others off.
                    out.push(1);
                    self.stage = Stage::Messages;
                }
                Stage::Messages => match self.verdict(msg) {
                    Verdict::Forward => out.extend_from_slice(msg),
                    Verdict::Drop => {}
                    Verdict::Input(i) => {
                        out.extend_from_slice(msg);
                        inputs.push(i);
                    }
                },
            }
            at += need;
        }
        self.buf.drain(..at);
        Ok(())
    }

    fn verdict(&self, m: &[u8]) -> Verdict {
        let input = match (m[0], m.get(1)) {
            (4, _) => Input::Key {
                down: m[1] != 0,
                keysym: u32::from_be_bytes([m[4], m[5], m[6], m[7]]),
                raw: m.to_vec(),
            },
            (5, _) => Input::Pointer {
                mask: m[1],
                x: u16::from_be_bytes([m[2], m[3]]),
                y: u16::from_be_bytes([m[4], m[5]]),
            },
            (255, Some(0)) => Input::Key {
                down: u16::from_be_bytes([m[2], m[3]]) != 0,
                keysym: u32::from_be_bytes([m[4], m[5], m[6], m[7]]),
                raw: m.to_vec(),
            },
            // Clipboard (the guest has no clipboard agent), power operations, resizing the
            // desktop under the agent: never a viewer's to do.
            (6 | 250 | 251, _) => return Verdict::Drop,
            _ => return Verdict::Forward,
        };
        if self.control {
            Verdict::Input(input)
        } else {
            Verdict::Drop
        }
    }
}

/// The length of the message at the head of `b`, once enough of it is there to tell.
fn message_len(b: &[u8]) -> Result<Option<usize>, RfbError> {
    let Some(&kind) = b.first() else {
        return Ok(None);
    };
    let at = |i: usize| b.get(i).copied();
    let be16 = |i: usize| Some(u16::from_be_bytes([at(i)?, at(i + 1)?]) as usize);
    let n = match kind {
        0 => Some(20),                             // SetPixelFormat
        2 => be16(2).map(|n| 4 + 4 * n),           // SetEncodings
        3 => Some(10),                             // FramebufferUpdateRequest
        4 => Some(8),                              // KeyEvent
        5 => Some(6),                              // PointerEvent
        150 => Some(10),                           // EnableContinuousUpdates
        248 => at(8).map(|n| 9 + n as usize),      // ClientFence
        250 => Some(4),                            // xvp
        251 => at(6).map(|n| 8 + 16 * n as usize), // SetDesktopSize
        6 => match b.get(4..8) {
            // ClientCutText; a negative length is the extended clipboard's.
            Some(l) => {
                let len = i32::from_be_bytes([l[0], l[1], l[2], l[3]]).unsigned_abs() as usize;
                if len > MAX_MESSAGE {
                    return Err(RfbError::TooLong(len));
                }
                Some(8 + len)
            }
            None => None,
        },
        255 => match at(1) {
            Some(0) => Some(12), // QEMU extended key event
            Some(_) => return Err(RfbError::Unsupported(255)),
            None => None,
        },
        other => return Err(RfbError::Unsupported(other)),
    };
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handshake() -> Vec<u8> {
        let mut v = b"RFB 003.008\n".to_vec();
        v.extend([1, 0]); // security None, ClientInit asking for exclusive access
        v
    }

    fn key(down: bool) -> Vec<u8> {
        vec![4, down as u8, 0, 0, 0, 0, 0, 0x61]
    }

    fn pointer(mask: u8, x: u16, y: u16) -> Vec<u8> {
        let mut v = vec![5, mask];
        v.extend(x.to_be_bytes());
        v.extend(y.to_be_bytes());
        v
    }

    fn session(control: bool) -> (Vec<u8>, Vec<Input>) {
        let mut stream = handshake();
        stream.extend([2, 0, 0, 2, 0, 0, 0, 7, 0xff, 0xff, 0xfe, 0xfe]); // SetEncodings x2
        stream.extend([3, 1, 0, 0, 0, 0, 5, 0, 3, 32]); // FramebufferUpdateRequest
        stream.extend(key(true));
        stream.extend(pointer(1, 300, 200));
        stream.extend([255, 0, 0, 1, 0, 0, 0, 0x62, 0, 0, 0, 48]); // QEMU key event
        stream.extend([6, 0, 0, 0, 0, 0, 0, 3, b'a', b'b', b'c']); // clipboard
        stream.extend([248, 0, 0, 0, 0, 0, 0, 1, 2, 9, 9]); // fence with 2 bytes
        let mut f = ClientFilter::new(control);
        let (mut out, mut inputs) = (Vec::new(), Vec::new());
        // Byte by byte: messages split anywhere still frame right.
        for b in &stream {
            f.feed(std::slice::from_ref(b), &mut out, &mut inputs)
                .unwrap();
        }
        (out, inputs)
    }

    #[test]
    fn view_only_drops_input_and_forces_sharing() {
        let (out, inputs) = session(false);
        assert!(inputs.is_empty());
        let mut want = b"RFB 003.008\n".to_vec();
        want.extend([1, 1]);
        want.extend([2, 0, 0, 2, 0, 0, 0, 7, 0xff, 0xff, 0xfe, 0xfe]);
        want.extend([3, 1, 0, 0, 0, 0, 5, 0, 3, 32]);
        want.extend([248, 0, 0, 0, 0, 0, 0, 1, 2, 9, 9]);
        assert_eq!(out, want);
    }

    #[test]
    fn control_passes_input_on_and_reports_it() {
        let (out, inputs) = session(true);
        assert_eq!(
            inputs,
            vec![
                Input::Key {
                    down: true,
                    keysym: 0x61,
                    raw: key(true)
                },
                Input::Pointer {
                    mask: 1,
                    x: 300,
                    y: 200
                },
                Input::Key {
                    down: true,
                    keysym: 0x62,
                    raw: vec![255, 0, 0, 1, 0, 0, 0, 0x62, 0, 0, 0, 48]
                },
            ]
        );
        assert!(out.windows(8).any(|w| w == key(true).as_slice()));
        assert!(!out.windows(3).any(|w| w == b"abc"), "clipboard is dropped");
    }

    #[test]
    fn unknown_messages_and_other_clients_end_the_connection() {
        let mut f = ClientFilter::new(false);
        let (mut out, mut inputs) = (Vec::new(), Vec::new());
        assert!(matches!(
            f.feed(b"RFB 003.003\n", &mut out, &mut inputs),
            Err(RfbError::Version(_))
        ));
        let mut f = ClientFilter::new(false);
        let mut s = handshake();
        s.push(77);
        assert_eq!(
            f.feed(&s, &mut out, &mut inputs),
            Err(RfbError::Unsupported(77))
        );
        let mut f = ClientFilter::new(false);
        let mut s = b"RFB 003.008\n".to_vec();
        s.push(2); // VNC authentication
        assert_eq!(
            f.feed(&s, &mut out, &mut inputs),
            Err(RfbError::Security(2))
        );
    }
}
