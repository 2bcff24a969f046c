//! Fuzz target `ipc`: the dataplane's IPC decoders (`runnel_node::ipc`) over arbitrary bytes.
//!
//! The IPC socket is the control process's way in: a frame that does not decode must be an
//! `IpcError`, never a panic, and whatever decodes must survive a round trip and, for
//! commands, conversion to a node command (which may refuse it with an error).
//!
//! Input: byte 0 picks the decoder (even: request, odd: reply); the rest is the archive.

#![no_main]

use libfuzzer_sys::fuzz_target;
use runnel_node::ipc::{decode_reply, decode_request, read_frame, write_frame, Request};

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    // The framing: a length prefix read from arbitrary bytes never panics.
    let _ = read_frame(&mut &data[..], &mut Vec::new());
    if which % 2 == 0 {
        if let Ok(request) = decode_request(bytes) {
            if let Request::Command { command, .. } = &request {
                let _ = command.to_command();
            }
            let mut frame = Vec::new();
            write_frame(&mut frame, &request).expect("a decoded request encodes");
            let mut archive = Vec::new();
            assert!(read_frame(&mut &frame[..], &mut archive).expect("our own frame"));
            assert_eq!(decode_request(&archive).expect("our own archive"), request);
        }
    } else if let Ok(reply) = decode_reply(bytes) {
        let mut frame = Vec::new();
        write_frame(&mut frame, &reply).expect("a decoded reply encodes");
        let mut archive = Vec::new();
        assert!(read_frame(&mut &frame[..], &mut archive).expect("our own frame"));
        assert_eq!(decode_reply(&archive).expect("our own archive"), reply);
    }
});
