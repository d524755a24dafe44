//! Test certificates from a private CA, made by the openssl command.

use std::path::Path;
use std::process::Command;

/// A private CA and a certificate for 127.0.0.1 it signed (for a server, or a client: a node
/// of a cluster is both), by the openssl command: (the CA's, the certificate, its key).
pub fn certificates(dir: &Path) -> (String, String, String) {
    let path = |name: &str| dir.join(name).to_str().unwrap().to_string();
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .unwrap();
    let steps: [&[&str]; 3] = [
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=test-ca",
            "-keyout",
            &path("ca-key.pem"),
            "-out",
            &path("ca.pem"),
        ],
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            &path("key.pem"),
            "-out",
            &path("server.csr"),
        ],
        &[
            "x509",
            "-req",
            "-in",
            &path("server.csr"),
            "-CA",
            &path("ca.pem"),
            "-CAkey",
            &path("ca-key.pem"),
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            &path("server.ext"),
            "-out",
            &path("cert.pem"),
        ],
    ];
    for step in steps {
        let made = Command::new("openssl").args(step).output().expect(
            "the openssl command makes the test's certificates: install it (apt-get install openssl)",
        );
        assert!(made.status.success(), "{made:?}");
    }
    (path("ca.pem"), path("cert.pem"), path("key.pem"))
}
