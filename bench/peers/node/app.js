'use strict';
// The Node.js peer: the users contract (DESIGN.md section 1) on Fastify, with better-sqlite3
// (SQLite) or node-postgres (PostgreSQL), written as a Node team would ship it: JSON schemas
// for bodies and responses (Fastify validates with ajv and serialises with
// fast-json-stringify), pino's request log on, prepared statements, durable commits (SQLite:
// WAL with synchronous = FULL, like the service; PostgreSQL: its default), a unique index for
// case-insensitive email uniqueness, keyset paging and a streamed full list.
//
// better-sqlite3 is synchronous: a query or a commit's fsync holds the process's event loop.
// Node teams answer that with one process per core, so the primary forks WORKERS workers
// (the cluster module; default: one per core) that share the port. On PostgreSQL each worker
// has its own pool of PG_POOL_SIZE connections (node-postgres' default, 10).
//
//   DATABASE_PATH=users.db PORT=8200 node app.js [--workers N]
//   DATABASE_URL=postgres://user@host/db PORT=8200 node app.js [--workers N]

const cluster = require('node:cluster');
const os = require('node:os');
const { Readable } = require('node:stream');
const Database = require('better-sqlite3');
const Fastify = require('fastify');
const pg = require('pg');

const DB_PATH = process.env.DATABASE_PATH || 'users.db';
const PG_URL = /^postgres(ql)?:\/\//.test(process.env.DATABASE_URL ?? '') ? process.env.DATABASE_URL : null;
const PG_POOL_SIZE = Number(process.env.PG_POOL_SIZE || 10);
const HOST = process.env.HOST || '127.0.0.1';
const PORT = Number(process.env.PORT || 8200);
const MAX_BODY_BYTES = 64 * 1024;
const MAX_PAGE_SIZE = 1000;
const DEFAULT_PAGE_SIZE = 100;
const STREAM_CHUNK_ROWS = 1000;
const PROBLEM_JSON = 'application/problem+json';

const SQLITE_SCHEMA = `
CREATE TABLE IF NOT EXISTS users (
    id         INTEGER PRIMARY KEY,
    name       TEXT    NOT NULL,
    email      TEXT    NOT NULL,
    email_key  TEXT    NOT NULL,
    created_at TEXT    NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS users_email_key ON users (email_key);
`;
const PG_SCHEMA = `
CREATE TABLE IF NOT EXISTS users (
    id         BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       TEXT        NOT NULL,
    email      TEXT        NOT NULL,
    email_key  TEXT        NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS users_email_key ON users (email_key);
`;

function workerCount() {
  const i = process.argv.indexOf('--workers');
  const raw = i >= 0 ? process.argv[i + 1] : process.env.WORKERS;
  const n = Number.parseInt(raw ?? '', 10);
  return Number.isInteger(n) && n > 0 ? n : os.availableParallelism();
}

// --- storage: the same four operations on either store (SQLite's answer at once, PostgreSQL's as a promise)

function openDatabase() {
  // timeout: how long a writer waits for the other workers' write lock (SQLITE_BUSY) before failing.
  const db = new Database(DB_PATH, { timeout: 5000 });
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = FULL'); // an acknowledged 201 survives a crash
  return db;
}

function sqliteStorage(db) {
  const select = 'SELECT id, name, email, created_at FROM users';
  const insert = db.prepare('INSERT INTO users (name, email, email_key, created_at) VALUES (?, ?, ?, ?)');
  const byId = db.prepare(`${select} WHERE id = ?`);
  const page = db.prepare(`${select} WHERE id > ? ORDER BY id LIMIT ?`);
  const ping = db.prepare('SELECT 1').pluck();
  return {
    insertUser(name, email) {
      const createdAt = new Date().toISOString().replace(/Z$/, '000Z'); // microseconds, as the contract shows
      try {
        const info = insert.run(name, email, email.toLowerCase(), createdAt);
        return { id: Number(info.lastInsertRowid), name, email, created_at: createdAt };
      } catch (err) {
        if (err.code === 'SQLITE_CONSTRAINT_UNIQUE') return null;
        throw err;
      }
    },
    userById: (id) => byId.get(id),
    page: (after, limit) => page.all(after, limit),
    ping: () => ping.get(),
    close: () => db.close(),
  };
}

pg.types.setTypeParser(pg.types.builtins.INT8, (v) => Number.parseInt(v, 10)); // ids fit in a double

function postgresStorage() {
  const pool = new pg.Pool({ connectionString: PG_URL, max: PG_POOL_SIZE });
  pool.on('error', (err) => console.error('idle PostgreSQL connection failed:', err.message)); // the pool replaces it
  const columns = 'id, name, email, created_at';
  const user = (r) => ({ id: r.id, name: r.name, email: r.email, created_at: r.created_at.toISOString() });
  return {
    async insertUser(name, email) {
      try {
        const { rows } = await pool.query({
          name: 'insert-user',
          text: `INSERT INTO users (name, email, email_key) VALUES ($1, $2, $3) RETURNING ${columns}`,
          values: [name, email, email.toLowerCase()],
        });
        return user(rows[0]);
      } catch (err) {
        if (err.code === '23505') return null; // unique_violation: the email is taken
        throw err;
      }
    },
    async userById(id) {
      const { rows } = await pool.query({ name: 'user-by-id', text: `SELECT ${columns} FROM users WHERE id = $1`,
        values: [id] });
      return rows.length ? user(rows[0]) : undefined;
    },
    async page(after, limit) {
      const { rows } = await pool.query({ name: 'page',
        text: `SELECT ${columns} FROM users WHERE id > $1 ORDER BY id LIMIT $2`, values: [after, limit] });
      return rows.map(user);
    },
    ping: () => pool.query('SELECT 1'),
    close: () => pool.end(),
  };
}

async function createSchema() {
  if (PG_URL) {
    const client = new pg.Client({ connectionString: PG_URL });
    await client.connect();
    try {
      await client.query(PG_SCHEMA);
    } finally {
      await client.end();
    }
    return;
  }
  const db = openDatabase();
  db.exec(SQLITE_SCHEMA);
  db.close();
}

// The whole table as one JSON array, read in keyset chunks so that no statement stays open
// while a slow client reads (better-sqlite3 allows one running statement per connection).
async function* fullList(store) {
  yield '[';
  let after = 0;
  let first = true;
  for (;;) {
    const rows = await store.page(after, STREAM_CHUNK_ROWS);
    if (rows.length === 0) break;
    const body = rows.map((r) => JSON.stringify(r)).join(',');
    yield first ? body : `,${body}`;
    first = false;
    after = rows[rows.length - 1].id;
  }
  yield ']';
}

// --- domain rules ------------------------------------------------------------------------------

const NAME_CHAR = /^[\p{L}\p{M} ]$/u;
const ATEXT = /^[\p{L}\p{N}!#$%&'*+/=?^_`{|}~-]+$/u;
const LABEL = /^[\p{L}\p{N}](?:[\p{L}\p{N}-]*[\p{L}\p{N}])?$/u;

function parseName(raw) {
  const name = raw.normalize('NFC').trim().split(' ').filter(Boolean).join(' ');
  const length = [...name].length;
  if (length < 3 || length > 50) throw new Error('must be 3 to 50 characters');
  for (const ch of name) {
    if (!NAME_CHAR.test(ch)) throw new Error('may contain only letters and spaces');
  }
  return name;
}

function parseEmail(raw) {
  const email = raw.trim().normalize('NFC');
  if (!email) throw new Error('must not be empty');
  if ([...email].length > 254) throw new Error('must be at most 254 characters');
  const at = email.lastIndexOf('@');
  const local = email.slice(0, Math.max(at, 0));
  const domain = email.slice(at + 1).toLowerCase();
  if (at < 0 || !local || !domain) throw new Error("must contain an '@' between a local part and a domain");
  if ([...local].length > 64) throw new Error('local part must be at most 64 characters');
  if (local.split('.').some((atom) => !ATEXT.test(atom))) throw new Error('local part is not valid');
  const labels = domain.split('.');
  if (labels.length < 2) throw new Error('domain must have at least two labels separated by dots');
  for (const label of labels) {
    if (label.length > 63 || !LABEL.test(label)) throw new Error(`domain label '${label}' is not valid`);
  }
  if (/^\d+$/.test(labels[labels.length - 1])) throw new Error('top-level domain must not be all digits');
  return `${local}@${domain}`;
}

// --- HTTP --------------------------------------------------------------------------------------

const userSchema = {
  type: 'object',
  properties: {
    id: { type: 'integer' },
    name: { type: 'string' },
    email: { type: 'string' },
    created_at: { type: 'string' },
  },
};
const statusSchema = { type: 'object', properties: { status: { type: 'string' } } };

function problem(reply, status, code, title, detail, errors) {
  const body = { type: `/problems/${code.replaceAll('_', '-')}`, title, status, detail, code };
  if (errors) body.errors = errors;
  body.request_id = reply.request.id;
  return reply.code(status).type(PROBLEM_JSON).send(JSON.stringify(body));
}

const invalidQuery = (reply, field, message) =>
  problem(reply, 400, 'invalid_query', 'Invalid query parameter', 'invalid query parameter', [{ field, message }]);

function unavailable(reply) {
  reply.header('retry-after', '1');
  return problem(reply, 503, 'service_unavailable', 'Service unavailable',
    'the service is temporarily unavailable; retry shortly');
}

function buildApp(store) {
  const app = Fastify({
    logger: { level: 'info' },
    bodyLimit: MAX_BODY_BYTES,
    // Strict body types: a number is not a name (Fastify coerces by default).
    ajv: { customOptions: { coerceTypes: false, allErrors: true } },
  });

  // The contract takes JSON only: application/json and application/*+json (Fastify parses text/plain too).
  app.removeContentTypeParser('text/plain');
  app.addContentTypeParser(/^application\/[\w.+-]+\+json$/, { parseAs: 'string' },
    app.getDefaultJsonParser('error', 'error'));

  app.setNotFoundHandler((_req, reply) => problem(reply, 404, 'not_found', 'Not found', 'no resource at this path'));

  app.setErrorHandler((err, req, reply) => {
    if (err.validation) {
      const errors = err.validation.map((e) => ({
        field: e.params?.missingProperty ?? (e.instancePath.replace(/^\//, '').replaceAll('/', '.') || 'body'),
        message: e.message,
      }));
      return problem(reply, 400, 'invalid_field', 'Invalid request body', 'one or more fields are invalid', errors);
    }
    switch (err.code) {
      case 'FST_ERR_CTP_BODY_TOO_LARGE':
        return problem(reply, 413, 'payload_too_large', 'Payload too large',
          `the request body exceeds ${MAX_BODY_BYTES} bytes`);
      case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
        return problem(reply, 415, 'unsupported_media_type', 'Unsupported media type',
          'the request body must be sent as application/json');
      case 'FST_ERR_CTP_EMPTY_JSON_BODY':
        return problem(reply, 400, 'malformed_json', 'Malformed JSON', 'the request body is empty');
      case 'SQLITE_BUSY':
      case 'SQLITE_IOERR':
      case 'ECONNREFUSED':
      case '57P01': // admin_shutdown
      case '57P03': // cannot_connect_now
        return unavailable(reply);
      default:
        break;
    }
    if (err instanceof SyntaxError || err.statusCode === 400) {
      return problem(reply, 400, 'malformed_json', 'Malformed JSON', 'the request body is not valid JSON');
    }
    req.log.error({ err }, 'internal error');
    return problem(reply, 500, 'internal_error', 'Internal server error', 'an unexpected error occurred');
  });

  app.get('/health', { schema: { response: { 200: statusSchema } } }, async () => ({ status: 'ok' }));

  app.get('/ready', { schema: { response: { 200: statusSchema } } }, async (_req, reply) => {
    try {
      await store.ping();
    } catch {
      return unavailable(reply);
    }
    return { status: 'ok' };
  });

  app.get('/users', { schema: { response: { 200: { type: 'array', items: userSchema } } } }, async (req, reply) => {
    const { limit, after } = req.query;
    if (limit === undefined && after === undefined) {
      return reply.type('application/json').send(Readable.from(fullList(store)));
    }
    let n = DEFAULT_PAGE_SIZE;
    if (limit !== undefined) {
      n = /^\d{1,4}$/.test(limit) ? Number(limit) : 0;
      if (n < 1 || n > MAX_PAGE_SIZE) return invalidQuery(reply, 'limit', `must be an integer from 1 to ${MAX_PAGE_SIZE}`);
    }
    let start = 0;
    if (after !== undefined) {
      if (!/^\d{1,18}$/.test(after)) return invalidQuery(reply, 'after', 'must be a non-negative integer (a user id)');
      start = Number(after);
    }
    const users = await store.page(start, n + 1);
    if (users.length > n) {
      users.length = n;
      reply.header('link', `</users?limit=${n}&after=${users[n - 1].id}>; rel="next"`);
    }
    return users;
  });

  app.get('/users/:id', { schema: { response: { 200: userSchema } } }, async (req, reply) => {
    const { id } = req.params;
    const user = /^\d{1,18}$/.test(id) && Number(id) > 0 ? await store.userById(Number(id)) : undefined;
    if (!user) return problem(reply, 404, 'not_found', 'Not found', 'no user with this id');
    return user;
  });

  const createUser = {
    schema: {
      body: {
        type: 'object',
        required: ['name', 'email'],
        properties: { name: { type: 'string' }, email: { type: 'string' } },
      },
      response: { 201: userSchema },
    },
  };
  async function create(req, reply) {
    const errors = [];
    let name;
    let email;
    try {
      name = parseName(req.body.name);
    } catch (e) {
      errors.push({ field: 'name', message: e.message });
    }
    try {
      email = parseEmail(req.body.email);
    } catch (e) {
      errors.push({ field: 'email', message: e.message });
    }
    if (errors.length) {
      return problem(reply, 400, 'invalid_field', 'Invalid request body', 'one or more fields are invalid', errors);
    }
    const user = await store.insertUser(name, email);
    if (!user) {
      return problem(reply, 400, 'email_taken', 'Email already registered', 'a user with this email already exists');
    }
    return reply.code(201).header('location', `/users/${user.id}`).send(user);
  }
  app.post('/user', createUser, create);
  app.post('/users', createUser, create);

  return app;
}

// --- processes ---------------------------------------------------------------------------------

async function serve() {
  const store = PG_URL ? postgresStorage() : sqliteStorage(openDatabase());
  const app = buildApp(store);
  const stop = async () => {
    await app.close(); // finishes the requests in flight
    await store.close();
    process.exit(0);
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
  await app.listen({ host: HOST, port: PORT });
}

async function supervise() {
  await createSchema(); // once, before any worker opens the database
  const workers = workerCount();
  let stopping = false;
  for (let i = 0; i < workers; i += 1) cluster.fork();
  cluster.on('exit', (worker, code, signal) => {
    if (stopping) return;
    console.error(`worker ${worker.process.pid} exited (${signal || code}); starting another`);
    cluster.fork();
  });
  const stopAll = () => {
    stopping = true;
    for (const worker of Object.values(cluster.workers)) worker.process.kill('SIGTERM');
  };
  process.once('SIGTERM', stopAll);
  process.once('SIGINT', stopAll);
}

(cluster.isPrimary ? supervise() : serve()).catch((err) => {
  console.error(err);
  process.exit(1);
});
