// Package deid de-identifies the values pacsflow's events carry, following
// DICOM PS3.15 Annex E, the Basic Application Level Confidentiality
// Profile, with one option: Retain Longitudinal Temporal Information with
// Modified Dates (configured by DateMode).
//
// Every replacement is a keyed hash: HMAC-SHA-256 under Config.Key, each
// kind of value in its own domain. It is deterministic, so pseudonyms are
// the same across processes and restarts and the references between events
// (an instance and its study, a version and the one it replaces, a patient
// and their studies) survive de-identification; and it is keyed, so nobody
// without the key can confirm a guess (Patient IDs and Accession Numbers
// are small spaces that an unkeyed hash would give away to a dictionary).
// Anyone with the key can, which is why it stays with the PHI services.
//
// # Actions on the fields of the events
//
// Table E.1-1 action codes: Z empty (or a dummy value), X remove, U a
// consistent replacement UID, D a dummy value, C clean, K keep. The
// Basic Profile's action comes first, the option's after a slash. The
// projection is services/analytics; its test classifies every field of the
// PHI event types as this table does, proves that no original value of a
// field the table does not keep reaches the analytics message, and fails
// on a field it has not classified.
//
//	Event field                        Table E.1-1 row (tag)                  Action   Projection
//	---------------------------------  -------------------------------------  -------  -----------------------------------------------
//	patient.id                         Patient ID (0010,0020)                 Z        keyed pseudonym PSN-…: a consistent dummy value,
//	                                                                                   so a patient's studies still link
//	patient.name                       Patient's Name (0010,0010)             Z        removed
//	patient.birth_date                 Patient's Birth Date (0010,0030)       Z        removed in both date modes: no option column of
//	                                                                                   the table shifts or keeps it
//	patient.sex                        Patient's Sex (0010,0040)              Z        removed (K only under Retain Patient
//	                                                                                   Characteristics, not applied)
//	study.study_instance_uid,          Study Instance UID (0020,000D)         U        PseudonymizeUID
//	  ce-subject
//	study.accession_number             Accession Number (0008,0050)           Z        keyed pseudonym (links to other data
//	                                                                                   de-identified with the same key)
//	study.study_id                     Study ID (0020,0010)                   Z        removed: a modality's counter, useless as a
//	                                                                                   pseudonym
//	study.date                         Study Date (0008,0020)                 Z / C    remove: removed; shift: moved back by the
//	                                                                                   patient's offset (ShiftDate)
//	study.time                         Study Time (0008,0030)                 Z / C    remove: removed; shift: kept when a valid TM,
//	                                                                                   since a whole-day shift leaves the time of day
//	study.description                  Study Description (0008,1030)          X        removed (free text; the Clean Descriptions
//	                                                                                   option is not applied)
//	study.referring_physician_name     Referring Physician's Name (0008,0090) Z        removed
//	study.requested_procedure_priority Requested Procedure Priority           K        kept when STAT, HIGH, ROUTINE, MEDIUM or LOW
//	                                   (0040,1003): not in the table
//	series_instance_uid                Series Instance UID (0020,000E)        U        PseudonymizeUID
//	series_description,                Series Description (0008,103E)         X        removed
//	  series[].description
//	sop_instance_uid                   SOP Instance UID (0008,0018), and      U        PseudonymizeUID
//	                                   Media Storage SOP Instance UID
//	                                   (0002,0003) of the file
//	modality, modalities,              Modality (0008,0060): not in the       K        kept when a valid CS (CodeString), else removed
//	  subject token                    table
//	body_part_examined                 Body Part Examined (0018,0015): not    K        kept when a valid CS, else removed
//	                                   in the table
//	sop_class_uid                      SOP Class UID (0008,0016): not in the  K        kept: a registered UID naming the kind of
//	                                   table                                           object, not the object
//	transfer_syntax_uid                Transfer Syntax UID (0002,0010): not   K        kept
//	                                   in the table
//	series_number, instance_number,    (0020,0011), (0020,0013), (0028,0008): K        kept
//	  number_of_frames                 not in the table
//	association.calling_ae,            no attribute; nearest rows: Performed  X / K    keyed pseudonym: AE titles name devices and
//	  calling_aes                      Station AE Title (0040,0241),                   sites, not patients; the pseudonym hides which
//	                                   Scheduled Station AE Title (0040,0001)          they are but keeps volumes per device countable
//	                                   (K: Retain Device Identity Option)
//	association.called_ae,             no attribute; nearest row: Scheduled   X / K    keyed pseudonym, as above; the analytics
//	  called_aes, PHI subject token    Study Location AE Title (0032,1021)             subjects carry no AE title
//	association.id, associations       no attribute: pacsflow's association   -        keyed pseudonym: the original joins the event to
//	                                   ID                                              ingest logs
//	association.source_address         no attribute: the sender's network     -        removed: locates the device and site
//	                                   address
//	object.bucket, object.key          no attribute: the key is STUDY/SERIES/ -        removed: it holds the UIDs (U) and a version
//	                                   INSTANCE.VERSION                                made from the storage time; analytics has no
//	                                                                                   access to the PHI bytes it locates anyway
//	object.sha256, replaces_sha256     no attribute: a digest of bytes that   -        keyed pseudonym (PseudonymizeDigest): equality
//	                                   contain PHI (nearest rows, MAC                  kept, so versions and what they replace still
//	                                   (0400,0404) and Digital Signatures              match; but a holder of the file (a patient, a
//	                                   Sequence (FFFA,FFFA), are X)                    clinician) can no longer find its event by
//	                                                                                   hashing it, and with it the patient's pseudonym
//	                                                                                   and whole history
//	received_at, first_received_at,    no attribute: times of receipt, which  Z / C    as Study Date: remove: absent, and ce-time zero
//	  last_received_at, ce-time        follow acquisition within minutes,              (the publisher stamps the publication time);
//	                                   so as identifying as Study Date and             shift: moved back by the same whole days as
//	                                   Time                                            the patient's dates (ShiftTime), time of day
//	                                                                                   and intervals kept
//	ce-id                              no attribute: holds the SOP Instance   -        EventID, a keyed hash, the same for a retried
//	                                   UID and the digest                              projection so JetStream de-duplicates it
//	ce-source                          no attribute: names the ingest host    -        not carried: the publisher names the projector
//	object.backend, object.size,       no attribute: configuration and        K        kept (backend only when "fs" or "objectstore")
//	  bytes, num_*, trigger,           counts
//	  generation
//
// Station Name (0008,1010) and Institution Name (0008,0080), X/Z/D, are not
// carried by the events; a field added for them, or for any other
// attribute, fails the projection's test until it is classified there and
// here.
//
// # Dates
//
// With DateShift, each patient has one offset of 1 to MaxShiftDays days
// back, from the keyed hash of the patient's identity (the Patient ID, or
// the study for a patient without one), applied to every date and
// timestamp of that patient, so intervals are kept. With DateRemove, the
// Basic Profile's Z, dates, times of day and timestamps are all removed;
// it is the default.
//
// # Residual risks
//
//   - A shift hides real dates from whoever holds analytics data but not
//     the times it was published. A subscriber of the live stream, or a
//     reader of JetStream's stored message timestamps, sees a recent
//     study's event arrive on its real day and can compute that patient's
//     offset, and with it the patient's real dates, past and future. Where
//     analytics subscribers must not learn real dates, use DateRemove; in
//     either mode, an event's arrival time tells when its study arrived.
//   - DateShift keeps the time of day, which someone who knows when a
//     patient was examined can match.
//   - Kept values are quasi-identifiers: modality, body part, numbers,
//     sizes and counts, and the equality of pseudonyms. A rare combination
//     can single a patient out in a small population.
//   - Anyone with the key can test guesses against the pseudonyms.
//   - A trace context propagated from the PHI message to the analytics
//     message would link the two; publish analytics events under a new
//     trace.
//   - The projection removes PHI from the events only; the stored objects
//     are not de-identified, and the analytics events carry no location of
//     them.
package deid
