#!/usr/bin/env node
// Streams a completion from the MaaS gateway (maas.v1.Gateway/Generate), or
// embeds texts (maas.v1.Gateway/Embed), with the contracts in protos/maas/v1,
// loaded at run time by @grpc/proto-loader.
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const { parseArgs } = require('node:util');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const REPO = path.resolve(__dirname, '..', '..');
// Bad command-line use; gRPC failures exit with their status code (1-16).
const EXIT_USAGE = 2;

const HELP = `usage: node client.js [options] [PROMPT]
       node client.js --embed [options] TEXT...

Streams a completion from the gateway to stdout; the final usage goes to stderr.
With --embed, embeds each TEXT and prints its vector, one a line, as
"embedding: INDEX [v0,v1,...]"; the usage goes to stderr.

options (environment variable in brackets):
  --address HOST:PORT   the gateway [MAAS_GATEWAY] (default 127.0.0.1:50051)
  --api-key KEY         API key [MAAS_API_KEY] (default: <repo>/.maas/dev_api_key)
  --model NAME          model [MAAS_MODEL] (default: the first one ListModels
                        returns of the kind asked for: generation, or embedding)
  --max-tokens N        most tokens to generate (default 64)
  --temperature T       sampling temperature
  --seed N              sampling seed
  --chat                send the prompt as a user chat turn, not as a raw prompt
  --tool NAME=SCHEMA    a function the model may call, with the JSON schema of
                        its arguments (repeatable; implies --chat)
  --tool-choice CHOICE  none, auto, required, or a --tool's NAME to call it;
                        its calls print as "tool_call: ID NAME ARGUMENTS"
  --embed               embed the TEXTs (one input each) instead of generating
  --dimensions N        with --embed: truncate each vector to N dimensions
  --timeout-s S         deadline for each call in seconds (default 120)
  --protos DIR          a copy of the repository's protos/ [MAAS_PROTOS] (default: <repo>/protos)
  PROMPT                the prompt [MAAS_PROMPT]
  TEXT...               with --embed: the inputs, in order [MAAS_PROMPT: one]`;

class UsageError extends Error {}

function parseOptions(argv, env) {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      address: { type: 'string' },
      'api-key': { type: 'string' },
      model: { type: 'string' },
      'max-tokens': { type: 'string', default: '64' },
      temperature: { type: 'string' },
      seed: { type: 'string' },
      chat: { type: 'boolean', default: false },
      tool: { type: 'string', multiple: true, default: [] },
      'tool-choice': { type: 'string' },
      embed: { type: 'boolean', default: false },
      dimensions: { type: 'string' },
      'timeout-s': { type: 'string', default: '120' },
      protos: { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    return { help: true };
  }
  const texts = positionals.length > 0 ? positionals : [env.MAAS_PROMPT].filter(Boolean);
  if (texts.length === 0) {
    throw new UsageError(`no ${values.embed ? 'text' : 'prompt'}: pass it or set MAAS_PROMPT`);
  }
  if (values.dimensions !== undefined && !values.embed) {
    throw new UsageError('--dimensions needs --embed');
  }
  return {
    address: values.address ?? env.MAAS_GATEWAY ?? '127.0.0.1:50051',
    apiKey: values['api-key'] ?? env.MAAS_API_KEY ?? devKey(),
    model: values.model ?? env.MAAS_MODEL,
    maxTokens: integer('--max-tokens', values['max-tokens']),
    temperature: values.temperature === undefined
      ? undefined : number('--temperature', values.temperature),
    seed: values.seed === undefined ? undefined : integer('--seed', values.seed),
    chat: values.chat || values.tool.length > 0,
    tools: values.tool.map(tool),
    toolChoice: values['tool-choice'],
    timeoutS: number('--timeout-s', values['timeout-s']),
    protos: values.protos ?? env.MAAS_PROTOS ?? path.join(REPO, 'protos'),
    prompt: texts.join(' '),
    embed: values.embed,
    texts,
    dimensions: values.dimensions === undefined
      ? undefined : integer('--dimensions', values.dimensions),
  };
}

function number(flag, text) {
  const value = Number(text);
  if (text.trim() === '' || !Number.isFinite(value) || value < 0) {
    throw new UsageError(`${flag} must be a non-negative number, not ${JSON.stringify(text)}`);
  }
  return value;
}

function integer(flag, text) {
  const value = number(flag, text);
  if (!Number.isInteger(value)) {
    throw new UsageError(`${flag} must be a whole number, not ${JSON.stringify(text)}`);
  }
  return value;
}

function tool(text) {
  const at = text.indexOf('=');
  if (at < 1) {
    throw new UsageError(`--tool must be NAME=SCHEMA, not ${JSON.stringify(text)}`);
  }
  return { name: text.slice(0, at), parameters: text.slice(at + 1) };
}

const TOOL_MODES = {
  none: 'TOOL_CHOICE_MODE_NONE',
  auto: 'TOOL_CHOICE_MODE_AUTO',
  required: 'TOOL_CHOICE_MODE_REQUIRED',
};

function devKey() {
  const file = path.join(REPO, '.maas', 'dev_api_key');
  if (!fs.existsSync(file)) {
    throw new UsageError('no API key: pass --api-key, set MAAS_API_KEY, or run `make run`');
  }
  return fs.readFileSync(file, 'utf8').trim();
}

function loadGateway(opts) {
  const file = 'maas/v1/gateway.proto';
  if (!fs.existsSync(path.join(opts.protos, file))) {
    throw new UsageError(`${file} not found under ${opts.protos}:`
      + ' point --protos at a copy of the repository\'s protos/');
  }
  // protos/ holds every import but protobuf's own types, which proto-loader ships.
  const definition = protoLoader.loadSync(file, {
    includeDirs: [opts.protos],
    keepCase: true, // field names as in the .proto: max_tokens, completion_tokens
    enums: String,
    longs: String, // uint64 counters would lose precision as JS numbers
    defaults: true, // zero counts are printed, not missing
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).maas.v1.Gateway;
}

function generateRequest(opts, model) {
  const request = { model, max_tokens: opts.maxTokens };
  if (opts.chat) {
    request.messages = { messages: [{ role: 'user', content: opts.prompt }] };
  } else {
    request.prompt = opts.prompt;
  }
  if (opts.temperature !== undefined) {
    request.temperature = opts.temperature;
  }
  if (opts.seed !== undefined) {
    request.seed = String(opts.seed);
  }
  request.tools = opts.tools;
  if (opts.toolChoice !== undefined) {
    const mode = TOOL_MODES[opts.toolChoice];
    request.tool_choice = mode ? { mode } : { function: opts.toolChoice };
  }
  return request;
}

function deadline(opts) {
  return { deadline: new Date(Date.now() + opts.timeoutS * 1000) };
}

// The first model of the kind the call needs: an embedding model for --embed,
// else one that generates.
function firstModel(client, metadata, opts) {
  const fits = (model) => (model.kind === 'MODEL_KIND_EMBEDDING') === opts.embed;
  return new Promise((resolve, reject) => {
    client.ListModels({}, metadata, deadline(opts), (err, reply) => {
      const model = err ? undefined : reply.models.find(fits);
      if (err) {
        reject(err);
      } else if (model === undefined) {
        const kind = opts.embed ? 'embedding' : 'generation';
        reject(new UsageError(`the mesh serves no ${kind} model right now`));
      } else {
        resolve(model.name);
      }
    });
  });
}

function embedRequest(opts, model) {
  const request = { model, inputs: opts.texts.map((text) => ({ text })) };
  if (opts.dimensions !== undefined) {
    request.dimensions = opts.dimensions;
  }
  return request;
}

// One unary Embed: the vectors to stdout, one a line; the usage to stderr.
function embed(client, metadata, opts, model) {
  return new Promise((resolve, reject) => {
    let requestId = '';
    const call = client.Embed(embedRequest(opts, model), metadata, deadline(opts), (err, reply) => {
      if (err) {
        reject(err);
        return;
      }
      reply.embeddings.forEach((embedding, index) => {
        process.stdout.write(`embedding: ${index} ${JSON.stringify(embedding.values)}\n`);
      });
      process.stderr.write(
        `usage: prompt_tokens=${reply.usage.prompt_tokens} inputs=${reply.embeddings.length}`
        + ` model=${reply.model} request_id=${requestId}\n`,
      );
      resolve();
    });
    call.on('metadata', (initial) => {
      requestId = String(initial.get('x-request-id')[0] ?? '');
    });
  });
}

async function main() {
  const opts = parseOptions(process.argv.slice(2), process.env);
  if (opts.help) {
    process.stdout.write(`${HELP}\n`);
    return;
  }
  const Gateway = loadGateway(opts);
  const client = new Gateway(opts.address, grpc.credentials.createInsecure());
  try {
    const metadata = new grpc.Metadata();
    metadata.set('authorization', `Bearer ${opts.apiKey}`);
    const model = opts.model ?? await firstModel(client, metadata, opts);
    if (opts.embed) {
      await embed(client, metadata, opts, model);
      return;
    }
    const call = client.Generate(generateRequest(opts, model), metadata, deadline(opts));
    let requestId = '';
    call.on('metadata', (initial) => {
      requestId = String(initial.get('x-request-id')[0] ?? '');
    });
    let last = null;
    // Streamed tool calls arrive in pieces (same index); joined, then printed.
    const calls = [];
    for await (const chunk of call) {
      process.stdout.write(chunk.text);
      for (const piece of chunk.tool_calls) {
        const whole = calls[piece.index] ?? (calls[piece.index] = { id: '', name: '', arguments: '' });
        whole.id ||= piece.id;
        whole.name ||= piece.name;
        whole.arguments += piece.arguments;
      }
      last = chunk;
    }
    process.stdout.write('\n');
    for (const c of calls) {
      process.stdout.write(`tool_call: ${c.id} ${c.name} ${c.arguments}\n`);
    }
    if (last !== null) {
      const { prompt_tokens, completion_tokens, cached_tokens } = last.usage;
      process.stderr.write(
        `usage: prompt_tokens=${prompt_tokens} completion_tokens=${completion_tokens}`
        + ` cached_tokens=${cached_tokens} finish_reason=${last.finish_reason}`
        + ` model=${model} request_id=${requestId}\n`,
      );
    }
  } finally {
    client.close();
  }
}

main().catch((err) => {
  if (err instanceof UsageError || String(err.code).startsWith('ERR_PARSE_ARGS')) {
    process.stderr.write(`${err.message} (node client.js --help lists the options)\n`);
    process.exitCode = EXIT_USAGE;
  } else if (typeof err.code === 'number' && err.code in grpc.status) {
    process.stderr.write(`error: ${grpc.status[err.code]} (code ${err.code}): ${err.details}\n`);
    process.exitCode = err.code;
  } else {
    process.stderr.write(`error: ${err.stack ?? err}\n`);
    process.exitCode = 1;
  }
});
