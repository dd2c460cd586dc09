#!/usr/bin/env node
// Interop client: sends a fixed set of spans and log records with the official
// OpenTelemetry JS SDK to an OTLP receiver, then writes a JSON description of
// exactly what was handed to the exporters.
//
// Usage: node send.mjs <grpc|http-json|http-proto> <endpoint> <out.json> [--compression=gzip|none]
//                       [--feedback-extra]
//   grpc:        endpoint is the gRPC target, e.g. http://127.0.0.1:4317
//   http-*:      endpoint is the base URL, e.g. http://127.0.0.1:4318 ;
//                /v1/traces and /v1/logs are appended.
//   --feedback-extra: also send the extra feedback described at emitExtraFeedback (off by default,
//                so the default set of spans and logs never changes).
//
// Exit status: 0 only if every span/log export call reported SUCCESS and both
// providers flushed and shut down cleanly; 1 otherwise (message on stderr).
// The output file is written in both cases (with "ok": false on failure) when
// possible, so a failing test can show what was attempted.

import { readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';

import {
  context,
  diag,
  ROOT_CONTEXT,
  DiagConsoleLogger,
  DiagLogLevel,
  SpanKind,
  SpanStatusCode,
  trace,
} from '@opentelemetry/api';
import { SeverityNumber } from '@opentelemetry/api-logs';
import { defaultResource, resourceFromAttributes } from '@opentelemetry/resources';
import {
  BatchLogRecordProcessor,
  InMemoryLogRecordExporter,
  LoggerProvider,
  SimpleLogRecordProcessor,
} from '@opentelemetry/sdk-logs';
import { BatchSpanProcessor, NodeTracerProvider } from '@opentelemetry/sdk-trace-node';

const require = createRequire(import.meta.url);
// ExportResultCode.SUCCESS from @opentelemetry/core (not a direct dependency).
const EXPORT_SUCCESS = 0;

const PROTOCOLS = ['grpc', 'http-json', 'http-proto'];
const SERVICE_NAME = 'node-interop';
const SCOPE_NAME = 'otel-feedback-interop';
const SCOPE_VERSION = '1.0.0';
// Hard cap so a hung exporter can never hang a test run.
const OVERALL_TIMEOUT_MS = 60_000;
const EXPORT_TIMEOUT_MS = 10_000;

function usage(msg) {
  if (msg) process.stderr.write(`send.mjs: ${msg}\n`);
  process.stderr.write(
    'usage: node send.mjs <grpc|http-json|http-proto> <endpoint> <out.json> [--compression=gzip|none] ' +
      '[--feedback-extra]\n',
  );
  process.exit(2);
}

const [protocol, endpointArg, outPath, ...rest] = process.argv.slice(2);
if (!protocol || !endpointArg || !outPath) usage('missing arguments');
if (!PROTOCOLS.includes(protocol)) usage(`unknown protocol ${JSON.stringify(protocol)}`);
let compression = 'none';
let feedbackExtra = false;
for (const opt of rest) {
  if (opt === '--feedback-extra') {
    feedbackExtra = true;
    continue;
  }
  const m = /^--compression=(gzip|none)$/.exec(opt);
  if (!m) usage(`unknown option ${JSON.stringify(opt)}`);
  compression = m[1];
}
const endpoint = endpointArg.replace(/\/+$/, '');

diag.setLogger(new DiagConsoleLogger(), DiagLogLevel.WARN);

function pkgVersion(name) {
  try {
    return require(`${name}/package.json`).version;
  } catch {
    // Packages whose "exports" map hides package.json: read it from node_modules.
    try {
      const url = new URL(`./node_modules/${name}/package.json`, import.meta.url);
      return JSON.parse(readFileSync(url, 'utf8')).version;
    } catch {
      return null;
    }
  }
}

// ---------------------------------------------------------------------------
// Exporters
// ---------------------------------------------------------------------------

async function makeExporters() {
  const common = { compression, timeoutMillis: EXPORT_TIMEOUT_MS };
  if (protocol === 'grpc') {
    const { OTLPTraceExporter } = await import('@opentelemetry/exporter-trace-otlp-grpc');
    const { OTLPLogExporter } = await import('@opentelemetry/exporter-logs-otlp-grpc');
    return {
      traceUrl: endpoint,
      logsUrl: endpoint,
      spanExporter: new OTLPTraceExporter({ ...common, url: endpoint }),
      logExporter: new OTLPLogExporter({ ...common, url: endpoint }),
    };
  }
  const traceUrl = `${endpoint}/v1/traces`;
  const logsUrl = `${endpoint}/v1/logs`;
  if (protocol === 'http-json') {
    const { OTLPTraceExporter } = await import('@opentelemetry/exporter-trace-otlp-http');
    const { OTLPLogExporter } = await import('@opentelemetry/exporter-logs-otlp-http');
    return {
      traceUrl,
      logsUrl,
      spanExporter: new OTLPTraceExporter({ ...common, url: traceUrl }),
      logExporter: new OTLPLogExporter({ ...common, url: logsUrl }),
    };
  }
  const { OTLPTraceExporter } = await import('@opentelemetry/exporter-trace-otlp-proto');
  const { OTLPLogExporter } = await import('@opentelemetry/exporter-logs-otlp-proto');
  return {
    traceUrl,
    logsUrl,
    spanExporter: new OTLPTraceExporter({ ...common, url: traceUrl }),
    logExporter: new OTLPLogExporter({ ...common, url: logsUrl }),
  };
}

// Wraps an exporter: records every item handed to it and every export result,
// so we both describe exactly what was sent and fail on any export error.
function recordingExporter(signal, inner, state) {
  return {
    export(items, resultCallback) {
      const call = { signal, count: items.length, result: null, error: null };
      state.calls.push(call);
      state.items.push(...items);
      inner.export(items, result => {
        call.result = result.code === EXPORT_SUCCESS ? 'success' : 'failed';
        if (result.code !== EXPORT_SUCCESS) {
          const err = result.error;
          call.error = err ? `${err.name || 'Error'}: ${err.message}` : 'unknown export error';
          if (err && err.code !== undefined) call.error += ` (code ${err.code})`;
          state.errors.push(`${signal} export failed: ${call.error}`);
        }
        resultCallback(result);
      });
    },
    forceFlush() {
      return inner.forceFlush ? inner.forceFlush() : Promise.resolve();
    },
    shutdown() {
      return inner.shutdown();
    },
  };
}

// ---------------------------------------------------------------------------
// Does this SDK carry LogRecord.eventName through to the exporter?
// ---------------------------------------------------------------------------

async function probeEventNameSupport() {
  const mem = new InMemoryLogRecordExporter();
  const lp = new LoggerProvider({ processors: [new SimpleLogRecordProcessor({ exporter: mem })] });
  lp.getLogger('probe').emit({ eventName: 'probe_event', body: 'probe' });
  await lp.forceFlush();
  const got = mem.getFinishedLogRecords();
  await lp.shutdown();
  return got.length === 1 && got[0].eventName === 'probe_event';
}

// ---------------------------------------------------------------------------
// Describing what was sent
// ---------------------------------------------------------------------------

const NANOS_PER_SEC = 1_000_000_000n;
function hrTimeToNanoString(hr) {
  return (BigInt(Math.trunc(hr[0])) * NANOS_PER_SEC + BigInt(Math.trunc(hr[1]))).toString();
}

// JS SpanKind is INTERNAL=0..CONSUMER=4; OTLP Span.SpanKind is UNSPECIFIED=0, INTERNAL=1..CONSUMER=5.
function otlpSpanKind(jsKind) {
  return jsKind + 1;
}

// Type of the OTLP AnyValue the JS transformer produces for a JS value
// (mirrors @opentelemetry/otlp-transformer toAnyValue).
function anyValueType(v) {
  if (typeof v === 'string') return 'string';
  if (typeof v === 'boolean') return 'bool';
  if (typeof v === 'number') return Number.isInteger(v) ? 'int' : 'double';
  if (v instanceof Uint8Array) return 'bytes';
  if (Array.isArray(v)) return 'array';
  if (v !== null && typeof v === 'object') return 'kvlist';
  return 'empty';
}

function describeValue(v) {
  const type = anyValueType(v);
  if (type === 'array') {
    return { type, value: v, itemTypes: v.map(anyValueType) };
  }
  if (type === 'bytes') return { type, value: Buffer.from(v).toString('base64') };
  return { type, value: v === undefined ? null : v };
}

function describeAttributes(attrs) {
  const out = {};
  for (const [k, v] of Object.entries(attrs || {})) out[k] = describeValue(v);
  return out;
}

// OTLP Span.flags / Link.flags: low 8 bits W3C trace flags, 0x100 = "has is_remote",
// 0x200 = "is_remote" (mirrors @opentelemetry/otlp-transformer buildSpanFlagsFrom).
function otlpSpanFlags(traceFlags, isRemote) {
  return ((traceFlags & 0xff) | 0x100 | (isRemote ? 0x200 : 0)) >>> 0;
}

function describeSpan(s) {
  const sc = s.spanContext();
  return {
    traceId: sc.traceId,
    spanId: sc.spanId,
    parentSpanId: s.parentSpanContext ? s.parentSpanContext.spanId : '',
    traceFlags: sc.traceFlags,
    flags: otlpSpanFlags(sc.traceFlags, s.parentSpanContext ? s.parentSpanContext.isRemote : false),
    traceState: sc.traceState ? sc.traceState.serialize() : '',
    name: s.name,
    kind: otlpSpanKind(s.kind),
    kindName: SpanKind[s.kind],
    startTimeUnixNano: hrTimeToNanoString(s.startTime),
    endTimeUnixNano: hrTimeToNanoString(s.endTime),
    status: { code: s.status.code, message: s.status.message ?? '' },
    attributes: describeAttributes(s.attributes),
    droppedAttributesCount: s.droppedAttributesCount,
    events: s.events.map(e => ({
      name: e.name,
      timeUnixNano: hrTimeToNanoString(e.time),
      attributes: describeAttributes(e.attributes),
      droppedAttributesCount: e.droppedAttributesCount ?? 0,
    })),
    droppedEventsCount: s.droppedEventsCount,
    links: s.links.map(l => ({
      traceId: l.context.traceId,
      spanId: l.context.spanId,
      traceState: l.context.traceState ? l.context.traceState.serialize() : '',
      flags: otlpSpanFlags(l.context.traceFlags, l.context.isRemote),
      attributes: describeAttributes(l.attributes),
      droppedAttributesCount: l.droppedAttributesCount ?? 0,
    })),
    droppedLinksCount: s.droppedLinksCount,
    scope: { name: s.instrumentationScope.name, version: s.instrumentationScope.version ?? '' },
    resource: describeAttributes(s.resource.attributes),
  };
}

function describeLog(r) {
  return {
    traceId: r.spanContext ? r.spanContext.traceId : '',
    spanId: r.spanContext ? r.spanContext.spanId : '',
    traceFlags: r.spanContext ? r.spanContext.traceFlags : 0,
    flags: r.spanContext ? r.spanContext.traceFlags : 0, // LogRecord.flags (absent on the wire when 0)
    eventName: r.eventName ?? '',
    severityNumber: r.severityNumber ?? 0,
    severityText: r.severityText ?? '',
    body: r.body === undefined ? null : describeValue(r.body),
    attributes: describeAttributes(r.attributes),
    droppedAttributesCount: r.droppedAttributesCount,
    timeUnixNano: hrTimeToNanoString(r.hrTime),
    observedTimeUnixNano: hrTimeToNanoString(r.hrTimeObserved),
    scope: { name: r.instrumentationScope.name, version: r.instrumentationScope.version ?? '' },
    resource: describeAttributes(r.resource.attributes),
  };
}

// ---------------------------------------------------------------------------
// Extra feedback (only with --feedback-extra)
// ---------------------------------------------------------------------------

const EXTRA_SPANS = 1;
const EXTRA_LOGS = 3;

// Feedback in the other shapes the OTel JS SDK can carry it:
//  - log `gen_ai.evaluation.result` on `retrieve`: name relevance, score 0.25, label irrelevant,
//    explanation, gen_ai.response.model=judge-model;
//  - log `feedback` on `llm` with a map body {user_feedback_category: "timeout"}, feedback.id=node-fb-1,
//    user.id=u-node, user_feedback=thumbs_down;
//  - log on `llm` named only by the older `event.name` attribute (`user_feedback`, no eventName field),
//    user_feedback_comment="too slow";
//  - span `judge` (root of a new trace) with a `feedback` span event naming `chat` through
//    feedback.trace_id / feedback.span_id (user_feedback_category="incorrect") and a
//    `gen_ai.evaluation.result` span event about itself (faithfulness, 0.5, partial).
function emitExtraFeedback({ tracer, logger, chat, retrieve, llm, eventNameAsField }) {
  const on = span => trace.setSpan(ROOT_CONTEXT, span);
  const named = (eventName, attributes) =>
    eventNameAsField ? { eventName, attributes } : { attributes: { ...attributes, 'event.name': eventName } };
  logger.emit({
    ...named('gen_ai.evaluation.result', {
      'gen_ai.evaluation.name': 'relevance',
      'gen_ai.evaluation.score.value': 0.25,
      'gen_ai.evaluation.score.label': 'irrelevant',
      'gen_ai.evaluation.explanation': 'the FAQ was not retrieved',
      'gen_ai.response.model': 'judge-model',
    }),
    context: on(retrieve),
  });
  logger.emit({
    ...named('feedback', { 'feedback.id': 'node-fb-1', 'user.id': 'u-node', user_feedback: 'thumbs_down' }),
    body: { user_feedback_category: 'timeout' },
    context: on(llm),
  });
  logger.emit({
    attributes: { 'event.name': 'user_feedback', user_feedback_comment: 'too slow' },
    context: on(llm),
  });
  const judge = tracer.startSpan('judge', { kind: SpanKind.INTERNAL, root: true });
  judge.addEvent('feedback', {
    'feedback.trace_id': chat.spanContext().traceId,
    'feedback.span_id': chat.spanContext().spanId,
    user_feedback_category: 'incorrect',
  });
  judge.addEvent('gen_ai.evaluation.result', {
    'gen_ai.evaluation.name': 'faithfulness',
    'gen_ai.evaluation.score.value': 0.5,
    'gen_ai.evaluation.score.label': 'partial',
  });
  judge.end();
}

// ---------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------

async function main() {
  const eventNameAsField = await probeEventNameSupport();
  const { traceUrl, logsUrl, spanExporter, logExporter } = await makeExporters();

  const spanState = { calls: [], items: [], errors: [] };
  const logState = { calls: [], items: [], errors: [] };
  const problems = [];

  const resource = defaultResource().merge(
    resourceFromAttributes({ 'service.name': SERVICE_NAME, 'interop.protocol': protocol }),
  );

  // Large batch delay: everything goes out in one request per signal at forceFlush().
  // (sdk-logs 0.223 processors take an options object; sdk-trace-base keeps the
  // (exporter, config) signature via its shim.)
  const batchOpts = {
    maxQueueSize: 1000,
    maxExportBatchSize: 512,
    scheduledDelayMillis: 30_000,
    exportTimeoutMillis: EXPORT_TIMEOUT_MS * 2,
  };
  const tracerProvider = new NodeTracerProvider({
    resource,
    spanProcessors: [new BatchSpanProcessor(recordingExporter('traces', spanExporter, spanState), batchOpts)],
  });
  const loggerProvider = new LoggerProvider({
    resource,
    processors: [new BatchLogRecordProcessor({ exporter: recordingExporter('logs', logExporter, logState), ...batchOpts })],
  });

  const tracer = tracerProvider.getTracer(SCOPE_NAME, SCOPE_VERSION);
  const logger = loggerProvider.getLogger(SCOPE_NAME, SCOPE_VERSION);

  // --- spans -------------------------------------------------------------
  const chat = tracer.startSpan('chat', {
    kind: SpanKind.SERVER,
    attributes: {
      'attr.string': 'hello wörld ✓',
      'attr.bool_true': true,
      'attr.bool_false': false,
      'attr.int': 42,
      'attr.int_zero': 0,
      'attr.int_negative': -7,
      'attr.int_large': 1099511627776, // 2**40, exact in a JS number
      'attr.double': 3.14159,
      'attr.double_negative': -0.5,
      'attr.string_array': ['a', 'b', ''],
      'attr.bool_array': [true, false, true],
      'attr.int_array': [1, 2, -3],
      'attr.double_array': [1.5, -2.25, 0.1],
      'attr.empty_string': '',
      'attr.empty_array': [],
      'gen_ai.operation.name': 'chat',
    },
  });
  const chatCtx = trace.setSpan(context.active(), chat);

  const retrieve = tracer.startSpan('retrieve', { kind: SpanKind.INTERNAL }, chatCtx);
  retrieve.addEvent('retrieved', {
    'retrieval.documents': 3,
    'retrieval.source': 'kb',
    'retrieval.scores': [0.9, 0.75, 0.5],
    'retrieval.hit': true,
  });
  retrieve.setStatus({ code: SpanStatusCode.OK });
  retrieve.end();

  const llm = tracer.startSpan(
    'llm',
    { kind: SpanKind.CLIENT, attributes: { 'gen_ai.request.model': 'test-model', 'gen_ai.usage.input_tokens': 12 } },
    chatCtx,
  );
  llm.setStatus({ code: SpanStatusCode.ERROR, message: 'model timed out' });
  llm.end();

  // --- logs (inside the chat span's lifetime, tied to its context) -------
  const feedbackAttrs = { user_feedback: 'negative', user_feedback_rating: 2 };
  const feedbackRecord = {
    severityNumber: SeverityNumber.INFO,
    severityText: 'INFO',
    body: 'user feedback received',
    attributes: eventNameAsField ? feedbackAttrs : { ...feedbackAttrs, 'event.name': 'user_feedback' },
    context: chatCtx,
  };
  if (eventNameAsField) feedbackRecord.eventName = 'user_feedback';
  logger.emit(feedbackRecord);
  // Explicit ROOT_CONTEXT so no ambient span can leak trace/span ids into it.
  logger.emit({ body: 'hello', context: ROOT_CONTEXT });

  chat.end();

  // A span in a separate trace, linked to "llm" with link attributes.
  const feedback = tracer.startSpan('feedback', {
    kind: SpanKind.CONSUMER,
    root: true,
    links: [
      {
        context: llm.spanContext(),
        attributes: { 'link.reason': 'user_feedback', 'link.rating': 2, 'link.weight': 0.25, 'link.flag': false },
      },
    ],
  });
  feedback.end();

  if (feedbackExtra) emitExtraFeedback({ tracer, logger, chat, retrieve, llm, eventNameAsField });

  // --- flush & shutdown ----------------------------------------------------
  for (const [what, fn] of [
    ['tracer provider forceFlush', () => tracerProvider.forceFlush()],
    ['logger provider forceFlush', () => loggerProvider.forceFlush()],
    ['tracer provider shutdown', () => tracerProvider.shutdown()],
    ['logger provider shutdown', () => loggerProvider.shutdown()],
  ]) {
    try {
      await fn();
    } catch (err) {
      problems.push(`${what} failed: ${err && err.message ? err.message : String(err)}`);
    }
  }

  const expectedSpans = 4 + (feedbackExtra ? EXTRA_SPANS : 0);
  const expectedLogs = 2 + (feedbackExtra ? EXTRA_LOGS : 0);
  problems.push(...spanState.errors, ...logState.errors);
  for (const c of [...spanState.calls, ...logState.calls]) {
    if (c.result === null) problems.push(`${c.signal} export of ${c.count} item(s) never completed`);
  }
  if (spanState.items.length !== expectedSpans) {
    problems.push(`expected ${expectedSpans} spans handed to the exporter, got ${spanState.items.length}`);
  }
  if (logState.items.length !== expectedLogs) {
    problems.push(`expected ${expectedLogs} log records handed to the exporter, got ${logState.items.length}`);
  }

  const ok = problems.length === 0;
  const doc = {
    ok,
    problems,
    protocol,
    compression,
    feedbackExtra,
    endpoint,
    traceUrl,
    logsUrl,
    eventNameMode: eventNameAsField ? 'field' : 'attribute',
    serviceName: SERVICE_NAME,
    scope: { name: SCOPE_NAME, version: SCOPE_VERSION },
    node: process.version,
    sdkVersions: Object.fromEntries(
      [
        '@opentelemetry/api',
        '@opentelemetry/api-logs',
        '@opentelemetry/sdk-trace-base',
        '@opentelemetry/sdk-trace-node',
        '@opentelemetry/sdk-logs',
        '@opentelemetry/resources',
        '@opentelemetry/otlp-transformer',
        `@opentelemetry/exporter-trace-otlp-${protocol === 'grpc' ? 'grpc' : protocol === 'http-json' ? 'http' : 'proto'}`,
        `@opentelemetry/exporter-logs-otlp-${protocol === 'grpc' ? 'grpc' : protocol === 'http-json' ? 'http' : 'proto'}`,
      ].map(n => [n, pkgVersion(n)]),
    ),
    exportCalls: {
      traces: spanState.calls.map(({ count, result, error }) => ({ count, result, error })),
      logs: logState.calls.map(({ count, result, error }) => ({ count, result, error })),
    },
    spans: spanState.items.map(describeSpan),
    logs: logState.items.map(describeLog),
  };
  writeFileSync(outPath, JSON.stringify(doc, null, 2) + '\n');

  if (!ok) {
    process.stderr.write(`send.mjs: FAILED (${protocol} -> ${endpoint}):\n  ${problems.join('\n  ')}\n`);
    return 1;
  }
  process.stdout.write(
    `send.mjs: ok: ${protocol} sent ${spanState.items.length} spans in ${spanState.calls.length} request(s), ` +
      `${logState.items.length} logs in ${logState.calls.length} request(s); eventName as ${doc.eventNameMode}\n`,
  );
  return 0;
}

const watchdog = setTimeout(() => {
  process.stderr.write(`send.mjs: FAILED: timed out after ${OVERALL_TIMEOUT_MS} ms\n`);
  process.exit(1);
}, OVERALL_TIMEOUT_MS);

main().then(
  code => {
    clearTimeout(watchdog);
    process.exit(code);
  },
  err => {
    clearTimeout(watchdog);
    process.stderr.write(`send.mjs: FAILED: ${err && err.stack ? err.stack : String(err)}\n`);
    process.exit(1);
  },
);
