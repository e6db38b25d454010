/** Names of what a controller creates (VMs, images, pools, …), as the RPCs take them. */
import * as z from 'zod';
import { NAME_RE } from './topics.js';

export const Name = z
  .string()
  .regex(NAME_RE, "letters, digits, '.', '_' and '-', at most 64, starting with a letter or digit")
  .refine((s) => !s.includes('..'), "must not contain '..'");

/** A VM reference: its id or its name. */
export const VmRef = Name;
