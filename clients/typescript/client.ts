// A typed client over the generated schema (schema.d.ts, from
// docs/openapi.json by openapi-typescript). It compiles only if the
// document describes what a web app needs: request bodies, success bodies,
// the decline body, error bodies and the enums below.
import type { paths, components } from "./schema";

type Json<P extends keyof paths, M extends keyof paths[P], S extends number> =
  paths[P][M] extends { responses: { [K in S]: { content: { "application/json": infer B } } } } ? B : never;

export type CreateBooking = NonNullable<paths["/bookings"]["post"]["requestBody"]>["content"]["application/json"];
export type BookingCreated = Json<"/bookings", "post", 201>;
export type Booking = components["schemas"]["BookingView"];
export type PaymentOk = Json<"/payments/execute", "post", 200>;
export type PaymentBadRequest = Json<"/payments/execute", "post", 400>;
export type Performance = Json<"/performances/{id}", "get", 200>;
export type ErrorBody = components["schemas"]["ErrorBody"];

// The enums a UI switches on.
const statuses: Booking["status"][] = ["pending", "confirmed", "cancelled", "expired", "failed", "refunded"];
const seat: components["schemas"]["SeatBody"]["state"] = "available";

export class Ticketing {
  constructor(private base: string, private token: string) {}

  private async call<T>(method: string, path: string, body?: unknown, key?: string): Promise<T> {
    const headers: Record<string, string> = { authorization: `Bearer ${this.token}` };
    if (body !== undefined) headers["content-type"] = "application/json";
    if (key) headers["idempotency-key"] = key;
    const response = await fetch(this.base + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    const data = await response.json();
    if (!response.ok && !(path === "/payments/execute" && response.status === 400)) {
      throw new Error((data as ErrorBody).error);
    }
    return data as T;
  }

  book(request: CreateBooking, key: string): Promise<BookingCreated> {
    return this.call("POST", "/bookings", request, key);
  }

  async pay(paymentIntentId: string, token: string, cvv: string): Promise<string> {
    const answer = await this.call<PaymentOk | PaymentBadRequest>("POST", "/payments/execute", {
      paymentIntentId,
      paymentMethodToken: token,
      cvv,
    });
    if ("pgMockData" in answer) return answer.pgMockData.processedAt;
    if (typeof answer.error === "string") throw new Error(answer.error);
    return `declined: ${answer.error.failureCode} (${answer.error.failureConcept})`;
  }

  performance(id: string): Promise<Performance> {
    return this.call("GET", `/performances/${encodeURIComponent(id)}`);
  }

  myBookings(): Promise<Booking[]> {
    return this.call("GET", "/bookings/my");
  }
}

export const known = { statuses, seat };
