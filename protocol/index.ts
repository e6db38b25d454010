export * from './errors.js';
export * from './topics.js';
export * from './codec.js';
export * from './validate.js';
export * as agent from './agent.js';
export * from './rpc.js';
export * from './client.js';
export * from './fs-transfer.js';
