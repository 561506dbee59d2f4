// A small static file server for the `qkvd pull` test, with HTTP Range
// support and misbehaviours on demand. Usage: node range_server.mjs DIR
// Prints "PORT n" once listening on 127.0.0.1 (ephemeral port), then one line
// per request: "GET /path range=<Range header or ->".
//   /files/NAME           the file, with Range (206 + Content-Range, 416)
//   /drop/N/NAME          first request on this path: headers for the whole
//                         answer, N body bytes, then the connection is cut;
//                         later requests behave like /files/NAME
//   /norange/NAME         ignores Range: always 200 with the whole file
//   /flaky503/NAME        first request 503 + Retry-After, then /files/NAME
//   /redirect/NAME        302 to /files/NAME
//   /status/CODE          replies CODE with a short text body
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';

const dir = process.argv[2];
const seen = new Set();

function sendFile(req, res, name, useRange, dropAfter) {
  const file = path.join(dir, path.basename(name));
  let st;
  try { st = fs.statSync(file); } catch { res.writeHead(404); res.end('no such file'); return; }
  const size = st.size;
  let start = 0, end = size - 1, status = 200;
  const m = useRange && /^bytes=(\d+)-(\d*)$/.exec(req.headers.range || '');
  if (m) {
    start = Number(m[1]);
    if (m[2]) end = Math.min(Number(m[2]), size - 1);
    if (start >= size) {
      res.writeHead(416, { 'Content-Range': `bytes */${size}` });
      res.end();
      return;
    }
    status = 206;
  }
  const headers = { 'Content-Type': 'application/octet-stream', 'Content-Length': String(end - start + 1),
                    'Accept-Ranges': useRange ? 'bytes' : 'none' };
  if (status === 206) headers['Content-Range'] = `bytes ${start}-${end}/${size}`;
  res.writeHead(status, headers);
  if (dropAfter !== undefined) {
    const fd = fs.openSync(file, 'r');
    const buf = Buffer.alloc(Math.min(dropAfter, end - start + 1));
    fs.readSync(fd, buf, 0, buf.length, start);
    fs.closeSync(fd);
    // Let the bytes reach the client, then cut the connection mid-body.
    res.write(buf, () => setTimeout(() => req.socket.destroy(), 50));
    return;
  }
  fs.createReadStream(file, { start, end }).pipe(res);
}

const server = http.createServer((req, res) => {
  console.log(`${req.method} ${req.url} range=${req.headers.range || '-'}`);
  const parts = req.url.split('/').filter(Boolean);
  const kind = parts[0];
  const first = !seen.has(req.url);
  seen.add(req.url);
  if (kind === 'files' && parts.length === 2) sendFile(req, res, parts[1], true);
  else if (kind === 'drop' && parts.length === 3) sendFile(req, res, parts[2], true, first ? Number(parts[1]) : undefined);
  else if (kind === 'norange' && parts.length === 2) sendFile(req, res, parts[1], false);
  else if (kind === 'flaky503' && parts.length === 2) {
    if (first) { res.writeHead(503, { 'Retry-After': '1' }); res.end('busy'); } else sendFile(req, res, parts[1], true);
  } else if (kind === 'redirect' && parts.length === 2) {
    res.writeHead(302, { Location: `/files/${parts[1]}` });
    res.end('moved');
  } else if (kind === 'status' && parts.length === 2) {
    res.writeHead(Number(parts[1]), { 'Content-Type': 'text/plain' });
    res.end(`error page for ${parts[1]}`);
  } else { res.writeHead(404); res.end('not found'); }
});
server.listen(0, '127.0.0.1', () => console.log(`PORT ${server.address().port}`));
