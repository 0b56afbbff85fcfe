//! Which container a clip is, read from its own first bytes, so that ffmpeg is
//! told the one demuxer to use (`-f`) instead of guessing: a playlist or
//! script (HLS, concat, ffconcat, SDP, …) that would make ffmpeg open other
//! files or URLs is not a container here, whatever the file is called.

/// How many leading bytes [`Container::sniff`] needs at most.
pub const SNIFF_BYTES: usize = 4096;

/// A container ffmpeg may read a user's clip as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Container {
    /// MP4, MOV, M4V, 3GP (ISO base media).
    Mov,
    /// Matroska and WebM.
    Matroska,
    Avi,
    /// MPEG transport stream (188-byte packets).
    MpegTs,
    /// MPEG program stream.
    MpegPs,
    Flv,
    Ogg,
    Gif,
    /// ASF, WMV.
    Asf,
}

impl Container {
    /// ffmpeg's demuxer name (`-f`).
    pub fn demuxer(self) -> &'static str {
        match self {
            Container::Mov => "mov",
            Container::Matroska => "matroska",
            Container::Avi => "avi",
            Container::MpegTs => "mpegts",
            Container::MpegPs => "mpeg",
            Container::Flv => "flv",
            Container::Ogg => "ogg",
            Container::Gif => "gif",
            Container::Asf => "asf",
        }
    }

    /// The container `head` (a file's first bytes) begins, or why it is none.
    pub fn sniff(head: &[u8]) -> Result<Container, String> {
        const ASF: [u8; 16] = [0x30, 0x26, 0xB2, 0x75, 0x8E, 0x66, 0xCF, 0x11, 0xA6, 0xD9, 0x00, 0xAA, 0x00, 0x62, 0xCE, 0x6C];
        let at = |offset: usize, magic: &[u8]| head.get(offset..offset + magic.len()) == Some(magic);
        let box_type = head.get(4..8);
        if box_type.is_some_and(|t| [b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"].iter().any(|m| t == *m)) {
            return Ok(Container::Mov);
        }
        if at(0, &[0x1A, 0x45, 0xDF, 0xA3]) {
            return Ok(Container::Matroska);
        }
        if at(0, b"RIFF") && at(8, b"AVI ") {
            return Ok(Container::Avi);
        }
        if head.len() >= 189 && head[0] == 0x47 && head[188] == 0x47 {
            return Ok(Container::MpegTs);
        }
        if at(0, &[0x00, 0x00, 0x01, 0xBA]) {
            return Ok(Container::MpegPs);
        }
        if at(0, b"FLV") {
            return Ok(Container::Flv);
        }
        if at(0, b"OggS") {
            return Ok(Container::Ogg);
        }
        if at(0, b"GIF87a") || at(0, b"GIF89a") {
            return Ok(Container::Gif);
        }
        if at(0, &ASF) {
            return Ok(Container::Asf);
        }
        let text = String::from_utf8_lossy(&head[..head.len().min(64)]);
        let still = at(0, b"\x89PNG") || at(0, &[0xFF, 0xD8, 0xFF]) || (at(0, b"RIFF") && at(8, b"WEBP"));
        let what = match text.trim_start_matches('\u{feff}').trim_start() {
            _ if still => "a still image (PNG, JPEG or WebP), not a clip",
            t if t.starts_with("#EXTM3U") => "an HLS playlist",
            t if t.starts_with("ffconcat") || t.starts_with("file ") || t.starts_with("file\t") => "a concat script",
            t if t.starts_with("v=0") => "an SDP description",
            t if t.starts_with('<') => "a markup document (DASH manifest or similar)",
            _ => "no known video container",
        };
        Err(format!("{what}: clips are read only as MP4/MOV, Matroska/WebM, AVI, MPEG-TS, MPEG-PS, FLV, Ogg, GIF or ASF, recognised by their first bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_are_known_by_their_signature_not_their_name() {
        let mut mp4 = vec![0, 0, 0, 0x20];
        mp4.extend_from_slice(b"ftypisom");
        assert_eq!(Container::sniff(&mp4), Ok(Container::Mov));
        assert_eq!(Container::sniff(&[0x1A, 0x45, 0xDF, 0xA3, 1]), Ok(Container::Matroska));
        assert_eq!(Container::sniff(b"RIFF\0\0\0\0AVI LIST"), Ok(Container::Avi));
        let mut ts = vec![0u8; 376];
        ts[0] = 0x47;
        ts[188] = 0x47;
        assert_eq!(Container::sniff(&ts), Ok(Container::MpegTs));
        assert_eq!(Container::sniff(b"GIF89a..."), Ok(Container::Gif));
        assert_eq!(Container::sniff(b"OggS\0"), Ok(Container::Ogg));
        assert_eq!(Container::Mov.demuxer(), "mov");
    }

    #[test]
    fn playlists_and_scripts_are_refused_whatever_their_name() {
        for (head, what) in [
            (&b"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n/etc/secret.mp4\n"[..], "an HLS playlist"),
            (&b"\xef\xbb\xbf#EXTM3U\n"[..], "an HLS playlist"),
            (&b"ffconcat version 1.0\nfile '/home/someone/private.mp4'\n"[..], "a concat script"),
            (&b"file '/home/someone/private.mp4'\n"[..], "a concat script"),
            (&b"v=0\no=- 0 0 IN IP4 127.0.0.1\n"[..], "an SDP description"),
            (&b"<?xml version=\"1.0\"?><MPD>"[..], "a markup document"),
            (&b"\x89PNG\r\n\x1a\n"[..], "a still image"),
            (&b"\xff\xd8\xff\xe0"[..], "a still image"),
            (&b"hello, not a clip"[..], "no known video container"),
            (&b""[..], "no known video container"),
        ] {
            let refused = Container::sniff(head).unwrap_err();
            assert!(refused.starts_with(what), "{refused}");
        }
    }
}
