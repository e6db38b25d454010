/**
 * The HTTP listener's own messages (mvirtd --http). `/metrics` speaks the
 * Prometheus text format; the dashboard asks `/session` how to reach the
 * broker over WebSocket on the same origin and as whom.
 */
import * as z from 'zod';

export const HTTP_PATHS = {
  dashboard: '/',
  metrics: '/metrics',
  session: '/session',
  /** MQTT over WebSocket on the same listener (subprotocol `mqtt`). */
  mqtt: '/mqtt',
  assets: '/assets/',
} as const;

export const DashboardSession = z.strictObject({
  hostId: z.string(),
  /** Topic root `<prefix>/<hostId>`. */
  root: z.string(),
  mqttPath: z.string(),
  /**
   * MQTT credentials for this page: the HTTP user and a short-lived token
   * as password; both null where anonymous controllers are allowed.
   */
  username: z.string().nullable(),
  password: z.string().nullable(),
  /** Epoch ms when the token stops being accepted for new connections; null without one. */
  expiresAt: z.number().nullable(),
});
export type DashboardSession = z.infer<typeof DashboardSession>;
