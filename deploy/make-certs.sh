#!/usr/bin/env bash
# A swarm CA and certificates for TLS on the chunk channel (`make certs`), into ${1:-certs}/.
# Seeders and leechers trust any certificate signed by this CA: membership, not host names.
set -euo pipefail
out=${1:-certs}
days=${CERT_DAYS:-825}
mkdir -p "$out"
cd "$out"
openssl req -x509 -newkey rsa:2048 -nodes -days "$days" -subj "/CN=p2p swarm CA" \
  -keyout ca.key -out ca.crt 2>/dev/null
for name in seeder leecher; do
  openssl req -newkey rsa:2048 -nodes -subj "/CN=p2p $name" -keyout "$name.key" -out "$name.csr" 2>/dev/null
  openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days "$days" \
    -extfile <(printf 'subjectAltName=DNS:%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$name") \
    -out "$name.crt" 2>/dev/null
  rm "$name.csr"
done
rm -f ca.srl
# Readable by the containers' non-root user; keep this folder private on a real deployment.
chmod 644 ./*.key ./*.crt
echo "certificates in $out: ca.crt, seeder.{crt,key}, leecher.{crt,key}"
