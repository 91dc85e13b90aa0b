//! Host/route parser: never panics, and a preview route names exactly what the host says.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sandgate::route::{route, Domains, Route};

fuzz_target!(|input: (&str, &str)| {
    let (authority, path) = input;
    let domains = Domains::new(&["preview.localhost"]);
    match route(authority, path, &domains) {
        Ok(Route::Preview { port, id_or_token }) => {
            assert!(port >= 1);
            assert!(!id_or_token.is_empty() && id_or_token.len() <= 63);
            assert!(id_or_token
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'));
            // The label is `<port>-<id>` at the very start of the host, whatever its case.
            let label = format!("{port}-{id_or_token}.");
            assert!(authority.to_ascii_lowercase().starts_with(&label), "{authority}");
        }
        Ok(Route::Toolbox { sandbox_id, rest }) => {
            assert!(!sandbox_id.is_empty() && sandbox_id.len() <= 128);
            assert!(path.starts_with("/toolbox/"));
            assert!(rest.is_empty() || rest.starts_with('/'));
        }
        Ok(Route::Own(_)) | Err(_) => {}
    }
});
