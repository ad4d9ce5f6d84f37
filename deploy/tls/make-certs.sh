#!/usr/bin/env bash
# Make the TLS material the recipes mount: a private CA (ca.pem) and one certificate
# (cert.pem, key.pem) signed by it, used by scheduler, workers and client alike.
# Dask checks that every peer's certificate is signed by the cluster CA (mutual TLS;
# host names are not checked), so anyone without key.pem cannot join or submit work.
#   usage: deploy/tls/make-certs.sh [OUTDIR]   (default deploy/tls/certs; 10-year validity)
set -euo pipefail
out="${1:-$(dirname "$0")/certs}"
mkdir -p "$out"
umask 077
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
openssl req -x509 -newkey rsa:3072 -nodes -days 3650 -subj "/CN=reff-dask cluster CA" \
  -keyout "$tmp/ca.key" -out "$out/ca.pem" 2>/dev/null
openssl req -newkey rsa:3072 -nodes -subj "/CN=reff-dask" -keyout "$out/key.pem" -out "$tmp/req.csr" 2>/dev/null
printf 'subjectAltName=DNS:scheduler,DNS:reff-dask-scheduler,DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n' > "$tmp/ext"
openssl x509 -req -in "$tmp/req.csr" -CA "$out/ca.pem" -CAkey "$tmp/ca.key" -CAcreateserial -days 3650 \
  -extfile "$tmp/ext" -out "$out/cert.pem" 2>/dev/null
chmod 644 "$out/ca.pem" "$out/cert.pem"; chmod 600 "$out/key.pem"
echo "wrote $out/ca.pem $out/cert.pem $out/key.pem"
