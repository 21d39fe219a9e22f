// Calls the services the way the old Node backend's callers would: @grpc/grpc-js with protos
// loaded at run time by @grpc/proto-loader. Prints one JSON object with what came back.
//
//   node tests/system/node/interop.js <protos dir> <googleapis include dir> <progress addr> <academic years addr>
//   node tests/system/node/interop.js retry <protos dir> <googleapis include dir> <academic years addr>
// The bearer token comes from the TOKEN environment variable. `retry` creates a year with a
// request id on a channel carrying the service config in SERVICE_CONFIG (the output of
// `python -m common.client --request-ids`), which retries it when its answer is lost.
'use strict';

const crypto = require('node:crypto');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const retrying = process.argv[2] === 'retry';
const args = process.argv.slice(retrying ? 3 : 2);
const [protosDir, googleapisDir] = args;
const [progressAddr, academicYearsAddr] = retrying ? [null, args[2]] : args.slice(2);
const token = process.env.TOKEN;

function load(file) {
  const definition = protoLoader.loadSync(path.join(protosDir, file), {
    includeDirs: [protosDir, googleapisDir],
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition);
}

function call(client, method, request, withToken = true) {
  const metadata = new grpc.Metadata();
  if (withToken) metadata.set('authorization', `Bearer ${token}`);
  return new Promise((resolve) => {
    client[method](request, metadata, { deadline: Date.now() + 10000 }, (error, response) => {
      resolve(error ? { code: error.code, details: error.details } : { code: 0, response });
    });
  });
}

async function progress(out) {
  const { progress: { v1 } } = load('progress/v1/progress.proto');
  const client = new v1.UserProgressService(progressAddr, grpc.credentials.createInsecure());
  const data = {
    progress_type: 'sign_learned',
    item_id: '  hello  ',
    score: 3,
    metadata: { structValue: { fields: { hand: { stringValue: 'left' } } } },
  };
  out.upsert = await call(client, 'UpsertUserProgress', { data });
  out.list = await call(client, 'ListUserProgress', { progress_type: 'sign_learned', limit: 5 });
  out.unauthenticated = await call(client, 'ListUserProgress', { progress_type: 'sign_learned' }, false);
  client.close();
}

async function academicYears(out) {
  const { academic_years: { v1 } } = load('academic_years/v1/academic_years.proto');
  const client = new v1.AcademicYearsService(academicYearsAddr, grpc.credentials.createInsecure());
  const data = { name: '2025/2026', start_date: '2025-09-01', end_date: '2026-06-30', current: true };
  out.create = await call(client, 'CreateAcademicYear', { data });
  out.listYears = await call(client, 'ListAcademicYears', { limit: 5 });
  client.close();
}

// A write the service config may retry: one request id for the operation, sent on every
// attempt (gRPC's retries resend the same message), and sent again here by hand, as a caller
// that gave up and tries the operation again would.
async function retriedCreate(out, address) {
  const { academic_years: { v1 } } = load('academic_years/v1/academic_years.proto');
  const client = new v1.AcademicYearsService(address, grpc.credentials.createInsecure(), {
    'grpc.service_config': process.env.SERVICE_CONFIG,
  });
  const request = { data: { name: 'retried' }, request_id: crypto.randomUUID() };
  out.requestId = request.request_id;
  out.retried = await call(client, 'CreateAcademicYear', request);
  out.again = await call(client, 'CreateAcademicYear', request);
  client.close();
}

async function main() {
  const out = {};
  if (retrying) {
    await retriedCreate(out, academicYearsAddr);
  } else {
    await progress(out);
    await academicYears(out);
  }
  process.stdout.write(`${JSON.stringify(out)}\n`);
}

main().catch((error) => {
  process.stderr.write(`${error.stack}\n`);
  process.exit(1);
});
