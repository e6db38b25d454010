/**
 * Type-only, checked by `npm run typecheck` (nothing runs): the page types
 * mqtt.js with its own browser subset (host/dashboard/mqtt-browser.d.ts, so
 * that Node's types stay out of the dashboard). Here, with mqtt.js's real
 * declarations, tsc proves that subset still describes mqtt.js: the options
 * the page passes are options mqtt.js takes, and mqtt.js's client and
 * `connect` can stand where the page expects its subset.
 */
import type mqtt from 'mqtt';
import type { IClientOptions, MqttClient } from 'mqtt';
import type browser from '../../host/dashboard/mqtt-browser.js';
import type { BrowserClientOptions, BrowserMqttClient } from '../../host/dashboard/mqtt-browser.js';

type Fits<Wanted, Given extends Wanted> = Given;

export type OptionsFit = Fits<IClientOptions, BrowserClientOptions>;
export type ClientFits = Fits<BrowserMqttClient, MqttClient>;
export type ConnectFits = Fits<(typeof browser)['connect'], (typeof mqtt)['connect']>;
