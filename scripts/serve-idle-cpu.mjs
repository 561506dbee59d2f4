// Measure what idle streaming connections cost qkvd serve.
// usage: node scripts/serve-idle-cpu.mjs [N=100]   (QKVD_BIN, QKVD_SHARED as for the tests)
// Starts the server with --max-seqs 1; one stream keeps the only sequence busy,
// then N more streams wait in the queue (suspended connections with nothing to
// send). Prints the loop thread's and the whole process's CPU use with and
// without the N idle streams, and with N idle keep-alive connections.
import http from 'node:http';
import net from 'node:net';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { startServer, SHARED, sleep } from '../tests/integration/lib/server.mjs';

const N = Number(process.argv[2] || 100);
const HZ = 100; // USER_HZ on Linux
const ticks = (pid, tid) => {
  const f = readFileSync(tid ? `/proc/${pid}/task/${tid}/stat` : `/proc/${pid}/stat`, 'utf8');
  const v = f.slice(f.lastIndexOf(')') + 2).split(' ');
  return Number(v[11]) + Number(v[12]); // utime + stime
};
async function cpu(pid, secs) {
  const l0 = ticks(pid, pid), p0 = ticks(pid), t0 = Date.now();
  await sleep(secs * 1000);
  const dt = (Date.now() - t0) / 1000;
  return { loop: (100 * (ticks(pid, pid) - l0)) / HZ / dt, proc: (100 * (ticks(pid) - p0)) / HZ / dt };
}
let finished = 0;
const stream = (port, body) => {
  const req = http.request({ host: '127.0.0.1', port, method: 'POST', path: '/v1/completions', headers: { 'Content-Type': 'application/json' } });
  req.end(JSON.stringify(body));
  req.on('response', (res) => { res.on('data', () => {}); res.on('end', () => finished++); });
  req.on('error', () => {});
  return req;
};

// a slower model than stories260K so that one generation outlasts the measurement
const MODEL = process.env.MODEL || path.join(SHARED, 'models/tiny-llama-gqa-f32.gguf');
const s = await startServer(['-m', MODEL, '--threads', '1', '--ctx', '16384', '--max-seqs', '1', '--queue-len', String(N + 10)]);
const pid = s.proc.pid;
const idle0 = await cpu(pid, 3);
console.log(`no connections:                 loop ${idle0.loop.toFixed(2)}% process ${idle0.proc.toFixed(2)}%`);
const socks = [];
for (let i = 0; i < N; i++) socks.push(net.connect(s.port, '127.0.0.1'));
await sleep(300);
const ka = await cpu(pid, 3);
console.log(`${N} idle TCP connections:      loop ${ka.loop.toFixed(2)}% process ${ka.proc.toFixed(2)}%`);
socks.forEach((x) => x.destroy());
// one long generation (EOS suppressed) keeps the engine busy
const long = stream(s.port, { prompt: 'Once upon a time', max_tokens: 16000, temperature: 1, stream: true, logit_bias: { 2: -100 } });
await sleep(300);
const busy = await cpu(pid, 3);
console.log(`1 generating stream:            loop ${busy.loop.toFixed(2)}% process ${busy.proc.toFixed(2)}%`);
const waiting = [];
for (let i = 0; i < N; i++) waiting.push(stream(s.port, { prompt: 'Hi', max_tokens: 1, stream: true }));
await sleep(500);
const withIdle = await cpu(pid, 3);
console.log(`1 generating + ${N} idle streams: loop ${withIdle.loop.toFixed(2)}% process ${withIdle.proc.toFixed(2)}% (streams finished meanwhile: ${finished})`);
waiting.forEach((r) => r.destroy());
long.destroy();
await s.stop();
