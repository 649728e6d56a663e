//! Endpoint URLs as the API checks them: any string is accepted or refused with a message,
//! a refused URL with user info never has its password echoed, and an accepted one with
//! private addresses refused never names a private IP literal.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &str| {
    for (http, private) in [(false, false), (true, true)] {
        match gancho_core::net::check_endpoint_url(data, http, private) {
            Ok(()) => {
                let uri: http::Uri = data.parse().expect("an accepted URL parses");
                assert!(!uri.authority().unwrap().as_str().contains('@'));
                if !private {
                    let host = uri.host().unwrap();
                    let bare = host.trim_start_matches('[').trim_end_matches(']');
                    if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
                        assert!(gancho_core::net::is_public(ip), "{ip} accepted");
                    }
                }
            }
            Err(msg) => {
                // Credentials in the authority never come back in the message.
                if let Some((userinfo, _)) = data
                    .split_once("://")
                    .map(|(_, rest)| &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())])
                    .and_then(|authority| authority.rsplit_once('@'))
                {
                    // Credential-like (so the check cannot be fooled by an input that spells
                    // out the message's own words) and not repeated elsewhere in the input.
                    let credential_like = userinfo
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == ':');
                    // Control characters are escaped in the message (`\0`), which can spell
                    // out a credential-like string by accident.
                    let plain = !data.chars().any(char::is_control);
                    if userinfo.len() >= 4
                        && credential_like
                        && plain
                        && data.matches(userinfo).count() == 1
                    {
                        let leaked = format!("{userinfo}@");
                        assert!(!msg.contains(&leaked), "credentials echoed: {msg}");
                    }
                }
            }
        }
    }
});
